/*
 * tests/unit/test_sock.c: src/net/sock.c — listening sockets (TCP v4/v6,
 * ephemeral ports, SO_REUSEPORT, Unix sockets) and address formatting.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "net/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define EPHEMERAL 65536u

static unsigned local_port(int fd, int *family)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    *family = ss.ss_family;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Connects a blocking client to addr, accepts it on the listener, returns
 * the accepted descriptor and formats the peer address the server saw. */
static int connect_accept(int lfd, const struct sockaddr *sa, socklen_t sl, char *peer, size_t cap)
{
    int c = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    assert_int_equal(connect(c, sa, sl), 0);
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 10000), 1);
    struct sockaddr_storage ss;
    socklen_t pl = sizeof ss;
    int a = accept4(lfd, (struct sockaddr *)&ss, &pl, SOCK_CLOEXEC);
    assert_true(a >= 0);
    dx__addr_format((struct sockaddr *)&ss, pl, peer, cap);
    close(a);
    return c;
}

static int have_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static void test_listen_v4_ephemeral(void **state)
{
    (void)state;
    unsigned bound = 0;
    int fd = dx__listen_tcp("127.0.0.1", EPHEMERAL, 16, false, &bound);
    assert_true(fd >= 0);
    int fam = 0;
    assert_true(bound > 0 && bound < 65536);
    assert_int_equal(local_port(fd, &fam), bound);
    assert_int_equal(fam, AF_INET);
    /* non-blocking and close-on-exec */
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bound)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char peer[64];
    int c = connect_accept(fd, (struct sockaddr *)&a, sizeof a, peer, sizeof peer);
    int cfam;
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", local_port(c, &cfam));
    assert_string_equal(peer, want);
    close(c);
    /* the port is free again once closed: a fixed port binds too */
    close(fd);
    unsigned again = 0;
    fd = dx__listen_tcp("127.0.0.1", bound, 16, false, &again);
    assert_true(fd >= 0);
    assert_int_equal(again, bound);
    close(fd);
}

static void test_listen_v6_ephemeral(void **state)
{
    (void)state;
    if (!have_ipv6_loopback())
        skip();
    unsigned bound = 0;
    int fd = dx__listen_tcp("::1", EPHEMERAL, 16, false, &bound);
    assert_true(fd >= 0);
    int fam = 0;
    assert_true(bound > 0);
    assert_int_equal(local_port(fd, &fam), bound);
    assert_int_equal(fam, AF_INET6);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
                             .sin6_port = htons((uint16_t)bound)};
    char peer[64];
    int c = connect_accept(fd, (struct sockaddr *)&a, sizeof a, peer, sizeof peer);
    int cfam;
    char want[64];
    snprintf(want, sizeof want, "[::1]:%u", local_port(c, &cfam));
    assert_string_equal(peer, want);
    close(c);
    close(fd);
}

/* No host: "::" dual-stack, so an IPv4 client gets in (seen v4-mapped). */
static void test_listen_any_dual_stack(void **state)
{
    (void)state;
    unsigned bound = 0;
    int fd = dx__listen_tcp(NULL, EPHEMERAL, 16, false, &bound);
    assert_true(fd >= 0);
    assert_true(bound > 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bound)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char peer[64];
    int c = connect_accept(fd, (struct sockaddr *)&a, sizeof a, peer, sizeof peer);
    int cfam;
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", local_port(c, &cfam));
    assert_string_equal(peer, want);
    close(c);
    close(fd);
}

static void test_reuse_port(void **state)
{
    (void)state;
    unsigned p1 = 0, p2 = 0;
    int a = dx__listen_tcp("127.0.0.1", EPHEMERAL, 16, true, &p1);
    assert_true(a >= 0);
    int b = dx__listen_tcp("127.0.0.1", p1, 16, true, &p2);
    assert_true(b >= 0);
    assert_int_equal(p2, p1);
    /* without SO_REUSEPORT the port is taken */
    unsigned p3 = 0;
    errno = 0;
    int c = dx__listen_tcp("127.0.0.1", p1, 16, false, &p3);
    assert_int_equal(c, DX_EADDR);
    assert_int_equal(errno, EADDRINUSE);
    close(a);
    close(b);
}

static void test_listen_errors(void **state)
{
    (void)state;
    unsigned bound = 0;
    /* an address this host does not have (TEST-NET-1, RFC 5737) */
    errno = 0;
    assert_int_equal(dx__listen_tcp("192.0.2.1", EPHEMERAL, 16, false, &bound), DX_EADDR);
    assert_int_equal(errno, EADDRNOTAVAIL);
}

static void test_listen_unix_replaces_stale(void **state)
{
    (void)state;
    char dir[] = "/tmp/dx_sock_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/s.sock", dir);
    int fd = dx__listen_unix(path, 16);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, path);
    char peer[64];
    int c = connect_accept(fd, (struct sockaddr *)&sun, sizeof sun, peer, sizeof peer);
    assert_string_equal(peer, "unix");
    close(c);
    close(fd); /* the socket file stays behind: stale */
    assert_int_equal(stat(path, &st), 0);
    fd = dx__listen_unix(path, 16);
    assert_true(fd >= 0);
    c = connect_accept(fd, (struct sockaddr *)&sun, sizeof sun, peer, sizeof peer);
    close(c);
    close(fd);
    unlink(path);

    /* a regular file is never replaced */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("keep me", f);
    fclose(f);
    errno = 0;
    assert_int_equal(dx__listen_unix(path, 16), DX_EADDR);
    assert_int_equal(errno, EADDRINUSE);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    unlink(path);

    /* a path longer than sun_path */
    char longp[200];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = 0;
    errno = 0;
    assert_int_equal(dx__listen_unix(longp, 16), DX_EADDR);
    assert_int_equal(errno, ENAMETOOLONG);
    rmdir(dir);
}

static void fmt4(const char *ip, unsigned port, char *out, size_t cap)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    assert_int_equal(inet_pton(AF_INET, ip, &a.sin_addr), 1);
    dx__addr_format((struct sockaddr *)&a, sizeof a, out, cap);
}

static void fmt6(const char *ip, unsigned port, char *out, size_t cap)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    assert_int_equal(inet_pton(AF_INET6, ip, &a.sin6_addr), 1);
    dx__addr_format((struct sockaddr *)&a, sizeof a, out, cap);
}

static void test_addr_format(void **state)
{
    (void)state;
    char out[64];
    fmt4("1.2.3.4", 5678, out, sizeof out);
    assert_string_equal(out, "1.2.3.4:5678");
    fmt4("255.255.255.255", 65535, out, sizeof out);
    assert_string_equal(out, "255.255.255.255:65535");
    fmt4("0.0.0.0", 0, out, sizeof out);
    assert_string_equal(out, "0.0.0.0:0");
    fmt6("::1", 5678, out, sizeof out);
    assert_string_equal(out, "[::1]:5678");
    fmt6("2001:db8::1", 443, out, sizeof out);
    assert_string_equal(out, "[2001:db8::1]:443");
    fmt6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, out, sizeof out);
    assert_string_equal(out, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
    fmt6("::ffff:10.0.0.1", 80, out, sizeof out);
    assert_string_equal(out, "10.0.0.1:80");
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, "/tmp/x.sock");
    dx__addr_format((struct sockaddr *)&sun, sizeof sun, out, sizeof out);
    assert_string_equal(out, "unix");
    /* a short buffer truncates and stays terminated */
    memset(out, 'X', sizeof out);
    fmt4("1.2.3.4", 5678, out, 8);
    assert_string_equal(out, "1.2.3.4");
    assert_int_equal(out[8], 'X');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_v4_ephemeral),
        cmocka_unit_test(test_listen_v6_ephemeral),
        cmocka_unit_test(test_listen_any_dual_stack),
        cmocka_unit_test(test_reuse_port),
        cmocka_unit_test(test_listen_errors),
        cmocka_unit_test(test_listen_unix_replaces_stale),
        cmocka_unit_test(test_addr_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
