/*
 * tests/unit/test_redis_bus.c: src/bus/redis*.c driven directly through the
 * bus vtable, two "nodes" (two buses, one worker each, each on its own loop
 * thread) against a real redis-server this program starts on a free port
 * in a temp dir (stopped by PID; a missing redis-server fails the test).
 * What the gateway cannot exercise without authentication: presence user
 * lists across nodes, /api/disconnect counts summed over nodes, and
 * cluster-wide connections per user, including a node that stops
 * refreshing (its loop stopped: its counts expire with --presence-ttl).
 * The in-node relay (redis_relay.c) on one bus with 4 workers on 4 loop
 * threads: one Redis subscription per channel for the node (PUBSUB NUMSUB
 * and NUMPAT, read with hiredis's blocking API from the test's thread),
 * every worker gets every entry in order, through a loss of every pub/sub
 * connection too; subscribe/leave churn from every worker at once ends
 * with no subscription; the bus freed while entries are in flight between
 * workers (ASan, TSan: this program runs whole under TSan).
 * Publish/subscribe, resume and faults are covered end to end by
 * tests/gateway/test_redis.py.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "bus/redis.h"

#include <hiredis/hiredis.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdatomic.h>
#include <sys/wait.h>

typedef struct node {
    dx__bus *bus;
    dx_loop *loop;
    pthread_t th;
    size_t disc_answer;         /* what disconnect_user returns here */
    _Atomic unsigned disc_calls;
} node;

typedef struct result {
    _Atomic int calls;
    int err;
    uint64_t count;
    size_t nusers;
    char users[4][16];
} result;

static pid_t redis_pid;
static char redis_dir[64];
static unsigned redis_port;

static unsigned free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

static void redis_start(void)
{
    snprintf(redis_dir, sizeof redis_dir, "/tmp/dx-redis-unit-XXXXXX");
    assert_non_null(mkdtemp(redis_dir));
    redis_port = free_port();
    char port[16];
    snprintf(port, sizeof port, "%u", redis_port);
    redis_pid = fork();
    assert_true(redis_pid >= 0);
    if (redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a test that aborts leaves no redis-server behind */
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", redis_dir, "--save",
               "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    uint64_t until = dx_test_mono_ms() + 20000;
    for (;;) {
        int fd = dx_test_dial(redis_port, 0);
        if (fd >= 0) {
            close(fd);
            return;
        }
        int st;
        if (waitpid(redis_pid, &st, WNOHANG) == redis_pid)
            fail_msg("redis-server exited at start (status %d): is it installed? (scripts/deps.sh test)", st);
        if (dx_test_mono_ms() > until)
            fail_msg("redis-server did not listen within 20 s");
        usleep(20000);
    }
}

static void redis_stop(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
    dx_test_rm_rf(redis_dir);
}

/* ---- events ---- */

static void ev_deliver(void *ud, dx__bus_topic *t, dx__gw_entry *e)
{
    (void)ud;
    (void)t;
    (void)e;
}

static size_t ev_disconnect_user(void *ud, const char *user, size_t len)
{
    node *n = ud;
    (void)user;
    (void)len;
    atomic_fetch_add(&n->disc_calls, 1);
    return n->disc_answer;
}

static const dx__bus_events events = {ev_deliver, ev_disconnect_user, NULL, NULL};

static void node_start(node *n, size_t disc_answer)
{
    memset(n, 0, sizeof *n);
    n->disc_answer = disc_answer;
    char url[64], why[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%u", redis_port);
    dx__bus_redis_opts o = {.workers = 1, .url = url, .presence_ttl_ms = 600};
    dx__gw_log_opts_default(&o.history);
    int err = 0;
    n->bus = dx__bus_redis_new(&o, &err, why, sizeof why);
    if (!n->bus)
        fail_msg("dx__bus_redis_new: %s (%s)", dx_strerror(err), why);
    n->loop = dx_loop_new(NULL, &err);
    assert_non_null(n->loop);
    assert_int_equal(dx__bus_attach(n->bus, 0, n->loop, &events, n), 0);
    assert_int_equal(pthread_create(&n->th, NULL, dx_test_loop_thread, n->loop), 0);
    uint64_t until = dx_test_mono_ms() + 20000;
    while (!dx__bus_healthy(n->bus)) {
        if (dx_test_mono_ms() > until)
            fail_msg("the bus did not reach Redis within 20 s");
        usleep(10000);
    }
}

static void node_halt(node *n)
{
    if (n->th) {
        dx_loop_stop(n->loop);
        pthread_join(n->th, NULL);
        n->th = 0;
    }
}

static void node_free(node *n)
{
    node_halt(n);
    dx__bus_free(n->bus);
    dx_loop_free(n->loop);
}

/* ---- calls posted to a node's loop ---- */

typedef struct call {
    node *n;
    const char *topic, *user;
    long delta;
    uint64_t limit;
    bool join;
    result *r;
} call;

static void count_done(void *ud, int err, uint64_t count)
{
    result *r = ud;
    r->err = err;
    r->count = count;
    atomic_fetch_add(&r->calls, 1);
}

static void snap_done(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    result *r = ud;
    (void)t;
    r->err = err;
    r->count = err ? 0 : snap->offset;
    atomic_fetch_add(&r->calls, 1);
}

static void pres_done(void *ud, int err, uint64_t count, const char *const *users, const size_t *lens, size_t n)
{
    result *r = ud;
    r->err = err;
    r->count = count;
    r->nusers = n;
    for (size_t i = 0; i < n && i < 4; i++)
        snprintf(r->users[i], sizeof r->users[i], "%.*s", (int)lens[i], users[i]);
    atomic_fetch_add(&r->calls, 1);
}

static void do_uconn(void *arg)
{
    call *c = arg;
    assert_int_equal(dx__bus_user_conns(c->n->bus, 0, c->user, strlen(c->user), c->delta, c->limit, count_done,
                                        c->r),
                     0);
}

static void do_sub(void *arg)
{
    call *c = arg;
    assert_int_equal(dx__bus_subscribe(c->n->bus, 0, c->topic, strlen(c->topic), c->user, c->user ? strlen(c->user) : 0,
                                       true, false, 0, NULL, 0, snap_done, c->r),
                     0);
}

static void do_pres(void *arg)
{
    call *c = arg;
    assert_int_equal(dx__bus_presence(c->n->bus, 0, c->topic, strlen(c->topic), pres_done, c->r), 0);
}

static void do_disc(void *arg)
{
    call *c = arg;
    assert_int_equal(dx__bus_disconnect_user(c->n->bus, 0, c->user, strlen(c->user), count_done, c->r), 0);
}

static void wait_calls(result *r, int n)
{
    uint64_t until = dx_test_mono_ms() + 20000;
    while (atomic_load(&r->calls) < n) {
        if (dx_test_mono_ms() > until)
            fail_msg("a completion did not come within 20 s (%d of %d)", atomic_load(&r->calls), n);
        usleep(5000);
    }
}

/* Runs `fn` on n's loop until the answer satisfies ok(), or fails after 10 s. */
static void until_answer(node *n, void (*fn)(void *), call *c, bool (*ok)(const result *), const char *what)
{
    uint64_t until = dx_test_mono_ms() + 10000;
    for (;;) {
        result r;
        memset(&r, 0, sizeof r);
        c->n = n;
        c->r = &r;
        dx_test_on_loop(n->loop, fn, c);
        wait_calls(&r, 1);
        assert_int_equal(r.err, 0);
        if (ok(&r))
            return;
        if (dx_test_mono_ms() > until)
            fail_msg("%s: last answer count=%llu users=%zu", what, (unsigned long long)r.count, r.nusers);
        usleep(20000);
    }
}

static bool three_and_two_users(const result *r)
{
    if (r->count != 3 || r->nusers != 2)
        return false;
    bool a = strcmp(r->users[0], "alice") == 0 || strcmp(r->users[1], "alice") == 0;
    bool b = strcmp(r->users[0], "bob") == 0 || strcmp(r->users[1], "bob") == 0;
    return a && b;
}

static bool count_three(const result *r) { return r->count == 3; }
static bool count_one(const result *r) { return r->count == 1; }

static void test_cluster_users_presence_disconnect(void **state)
{
    (void)state;
    redis_start();
    node n1, n2;
    node_start(&n1, 2);
    node_start(&n2, 3);

    /* presence: alice on node 1; bob and an anonymous one on node 2 */
    result rs1, rs2; /* one per node: each is written by its node's thread */
    memset(&rs1, 0, sizeof rs1);
    memset(&rs2, 0, sizeof rs2);
    call c = {.n = &n1, .topic = "room", .user = "alice", .r = &rs1};
    dx_test_on_loop(n1.loop, do_sub, &c);
    c = (call){.n = &n2, .topic = "room", .user = "bob", .r = &rs2};
    dx_test_on_loop(n2.loop, do_sub, &c);
    c = (call){.n = &n2, .topic = "room", .user = NULL, .r = &rs2};
    dx_test_on_loop(n2.loop, do_sub, &c);
    wait_calls(&rs1, 1);
    wait_calls(&rs2, 2);
    assert_int_equal(rs1.err, 0);
    assert_int_equal(rs2.err, 0);
    call pc = {.topic = "room"};
    until_answer(&n1, do_pres, &pc, three_and_two_users, "presence through node 1");
    until_answer(&n2, do_pres, &pc, three_and_two_users, "presence through node 2");

    /* /api/disconnect: every node's worker answers; the counts add up */
    result rd;
    memset(&rd, 0, sizeof rd);
    c = (call){.n = &n1, .user = "alice", .r = &rd};
    dx_test_on_loop(n1.loop, do_disc, &c);
    wait_calls(&rd, 1);
    assert_int_equal(rd.err, 0);
    assert_int_equal(rd.count, 5);
    assert_int_equal(atomic_load(&n1.disc_calls), 1);
    assert_int_equal(atomic_load(&n2.disc_calls), 1);

    /* connections per user: +1 +1 on node 1, +1 on node 2 → 3 from either */
    result ru, ru2;
    memset(&ru, 0, sizeof ru);
    memset(&ru2, 0, sizeof ru2);
    c = (call){.n = &n1, .user = "carol", .delta = 1, .r = &ru};
    dx_test_on_loop(n1.loop, do_uconn, &c);
    dx_test_on_loop(n1.loop, do_uconn, &c);
    c = (call){.n = &n2, .user = "carol", .delta = 1, .r = &ru2};
    dx_test_on_loop(n2.loop, do_uconn, &c);
    wait_calls(&ru, 2);
    wait_calls(&ru2, 1);
    assert_int_equal(ru.err, 0);
    assert_int_equal(ru2.err, 0);
    call uc = {.user = "carol", .delta = 0};
    until_answer(&n2, do_uconn, &uc, count_three, "connections of carol through node 2");
    /* -1 on node 1: 2 */
    memset(&ru, 0, sizeof ru);
    c = (call){.n = &n1, .user = "carol", .delta = -1, .r = &ru};
    dx_test_on_loop(n1.loop, do_uconn, &c);
    wait_calls(&ru, 1);
    assert_int_equal(ru.count, 2);

    /* the limit is checked and added in one step: erin has 1 of 2 (node
     * 1); node 1 and node 2 ask for the last slot at once: exactly one
     * gets it, the other DX_ELIMIT with the count 2; the winner gives it
     * back (5 rounds) */
    result re;
    memset(&re, 0, sizeof re);
    c = (call){.n = &n1, .user = "erin", .delta = 1, .limit = 2, .r = &re};
    dx_test_on_loop(n1.loop, do_uconn, &c);
    wait_calls(&re, 1);
    assert_int_equal(re.err, 0);
    assert_int_equal(re.count, 1);
    for (int round = 0; round < 5; round++) {
        result ra, rb;
        memset(&ra, 0, sizeof ra);
        memset(&rb, 0, sizeof rb);
        call ca = {.n = &n1, .user = "erin", .delta = 1, .limit = 2, .r = &ra};
        call cb = {.n = &n2, .user = "erin", .delta = 1, .limit = 2, .r = &rb};
        assert_int_equal(dx_loop_post(n2.loop, do_uconn, &cb), 0); /* runs while node 1 asks */
        dx_test_on_loop(n1.loop, do_uconn, &ca);
        wait_calls(&ra, 1);
        wait_calls(&rb, 1);
        assert_true((ra.err == 0) != (rb.err == 0));
        result *lost = ra.err ? &ra : &rb;
        assert_int_equal(lost->err, DX_ELIMIT);
        assert_int_equal(lost->count, 2);
        assert_int_equal(ra.err ? rb.count : ra.count, 2);
        memset(&re, 0, sizeof re);
        c = (call){.n = ra.err ? &n2 : &n1, .user = "erin", .delta = -1, .r = &re};
        dx_test_on_loop(c.n->loop, do_uconn, &c);
        wait_calls(&re, 1);
        assert_int_equal(re.count, 1);
    }

    /* node 2 stops (its loop halted: no refresh): its connection of carol
     * and its presence expire within the TTL (600 ms; waited up to 10 s) */
    node_halt(&n2);
    until_answer(&n1, do_uconn, &uc, count_one, "node 2's connection of carol expired");
    result rp;
    uint64_t until = dx_test_mono_ms() + 10000;
    for (;;) {
        memset(&rp, 0, sizeof rp);
        pc = (call){.n = &n1, .topic = "room", .r = &rp};
        dx_test_on_loop(n1.loop, do_pres, &pc);
        wait_calls(&rp, 1);
        if (rp.count == 1 && rp.nusers == 1 && strcmp(rp.users[0], "alice") == 0)
            break;
        if (dx_test_mono_ms() > until)
            fail_msg("node 2's presence did not expire: count %llu", (unsigned long long)rp.count);
        usleep(20000);
    }
    node_free(&n2);
    node_free(&n1);
    redis_stop();
}


/* ---- the in-node relay: one bus, 4 workers on 4 loops ---- */

#define MW 4

typedef struct wrec {
    struct mnode *m;
    unsigned index;
    const char *topic;          /* deliveries of this topic are checked */
    _Atomic uint64_t got;       /* entries of `topic` delivered here */
    _Atomic uint64_t last;      /* the last offset */
    _Atomic uint64_t disorder;  /* entries not last + 1 */
    _Atomic int subs;           /* subscribe completions */
    _Atomic int sub_errs;
    _Atomic int pubs;           /* publish completions */
    _Atomic int pub_errs;
} wrec;

typedef struct mnode {
    dx__bus *bus;
    dx_loop *loop[MW];
    pthread_t th[MW];
    wrec rec[MW];
} mnode;

static void mw_deliver(void *ud, dx__bus_topic *t, dx__gw_entry *e)
{
    wrec *r = ud;
    if (!r->topic || strcmp(t->name, r->topic) != 0)
        return;
    uint64_t off = dx__gw_entry_offset(e);
    if (off != atomic_load(&r->last) + 1)
        atomic_fetch_add(&r->disorder, 1);
    atomic_store(&r->last, off);
    atomic_fetch_add(&r->got, 1);
}

static const dx__bus_events mw_events = {mw_deliver, ev_disconnect_user, NULL, NULL};

static void mnode_start(mnode *m)
{
    memset(m, 0, sizeof *m);
    char url[64], why[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%u", redis_port);
    dx__bus_redis_opts o = {.workers = MW, .url = url, .presence_ttl_ms = 600};
    dx__gw_log_opts_default(&o.history);
    int err = 0;
    m->bus = dx__bus_redis_new(&o, &err, why, sizeof why);
    if (!m->bus)
        fail_msg("dx__bus_redis_new: %s (%s)", dx_strerror(err), why);
    for (unsigned i = 0; i < MW; i++) {
        m->rec[i].m = m;
        m->rec[i].index = i;
        m->loop[i] = dx_loop_new(NULL, &err);
        assert_non_null(m->loop[i]);
        assert_int_equal(dx__bus_attach(m->bus, i, m->loop[i], &mw_events, &m->rec[i]), 0);
    }
    for (unsigned i = 0; i < MW; i++)
        assert_int_equal(pthread_create(&m->th[i], NULL, dx_test_loop_thread, m->loop[i]), 0);
}

static void mnode_wait_healthy(mnode *m)
{
    uint64_t until = dx_test_mono_ms() + 20000;
    while (!dx__bus_healthy(m->bus)) {
        if (dx_test_mono_ms() > until)
            fail_msg("the bus did not reach Redis within 20 s");
        usleep(10000);
    }
}

static void mnode_free(mnode *m)
{
    for (unsigned i = 0; i < MW; i++)
        dx_loop_stop(m->loop[i]);
    for (unsigned i = 0; i < MW; i++)
        pthread_join(m->th[i], NULL);
    dx__bus_free(m->bus);
    for (unsigned i = 0; i < MW; i++)
        dx_loop_free(m->loop[i]);
}

typedef struct mcall {
    wrec *r;
    const char *topic;
    int n;        /* repetitions */
    bool leave;   /* subscribe then leave at once, n times */
    long delta;   /* patterns */
} mcall;

static void mw_sub_done(void *ud, int err, dx__bus_topic *t, dx__gw_snapshot *snap)
{
    wrec *r = ud;
    (void)t;
    (void)snap;
    if (err)
        atomic_fetch_add(&r->sub_errs, 1);
    atomic_fetch_add(&r->subs, 1);
}

static void mw_pub_done(void *ud, int err, uint64_t offset, const char *epoch)
{
    wrec *r = ud;
    (void)offset;
    (void)epoch;
    if (err)
        atomic_fetch_add(&r->pub_errs, 1);
    atomic_fetch_add(&r->pubs, 1);
}

static void do_msub(void *arg)
{
    mcall *c = arg;
    dx__bus *b = c->r->m->bus;
    for (int i = 0; i < c->n; i++) {
        assert_int_equal(dx__bus_subscribe(b, c->r->index, c->topic, strlen(c->topic), NULL, 0, true, false, 0, NULL,
                                           0, mw_sub_done, c->r),
                         0);
        if (c->leave)
            dx__bus_leave(b, c->r->index, c->topic, strlen(c->topic), NULL, 0);
    }
}

static void do_mleave(void *arg)
{
    mcall *c = arg;
    for (int i = 0; i < c->n; i++)
        dx__bus_leave(c->r->m->bus, c->r->index, c->topic, strlen(c->topic), NULL, 0);
}

static void do_mpattern(void *arg)
{
    mcall *c = arg;
    for (int i = 0; i < c->n; i++)
        dx__bus_pattern(c->r->m->bus, c->r->index, c->topic, strlen(c->topic), c->delta);
}

static void do_mpub(void *arg)
{
    mcall *c = arg;
    for (int i = 0; i < c->n; i++) {
        char body[32];
        int n = snprintf(body, sizeof body, "m%d", i);
        int rc = dx__bus_publish(c->r->m->bus, c->r->index, c->topic, strlen(c->topic), DX__GW_KIND_TEXT, body,
                                 (size_t)n, mw_pub_done, c->r);
        if (rc) { /* refused at once: counted as a completion with an error */
            atomic_fetch_add(&c->r->pub_errs, 1);
            atomic_fetch_add(&c->r->pubs, 1);
        }
    }
}

static void wait_atomic(_Atomic int *v, int n, const char *what)
{
    uint64_t until = dx_test_mono_ms() + 20000;
    while (atomic_load(v) < n) {
        if (dx_test_mono_ms() > until)
            fail_msg("%s: %d of %d within 20 s", what, atomic_load(v), n);
        usleep(5000);
    }
}

static void wait_got(wrec *r, uint64_t n, const char *what)
{
    uint64_t until = dx_test_mono_ms() + 20000;
    while (atomic_load(&r->got) < n) {
        if (dx_test_mono_ms() > until)
            fail_msg("%s: worker %u got %llu of %llu within 20 s", what, r->index,
                     (unsigned long long)atomic_load(&r->got), (unsigned long long)n);
        usleep(5000);
    }
}

/* PUBSUB NUMSUB dx:m:<topic>, or (topic NULL) PUBSUB NUMPAT. */
static long long redis_numsub(const char *topic)
{
    redisContext *c = redisConnect("127.0.0.1", (int)redis_port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    redisReply *r = topic ? redisCommand(c, "PUBSUB NUMSUB dx:m:%s", topic) : redisCommand(c, "PUBSUB NUMPAT");
    assert_non_null(r);
    long long n = -1;
    if (topic && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_INTEGER)
        n = r->element[1]->integer;
    else if (!topic && r->type == REDIS_REPLY_INTEGER)
        n = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

static void wait_numsub(const char *topic, long long want, const char *what)
{
    uint64_t until = dx_test_mono_ms() + 20000;
    long long n;
    while ((n = redis_numsub(topic)) != want) {
        if (dx_test_mono_ms() > until)
            fail_msg("%s: %s %s is %lld, expected %lld", what, topic ? "NUMSUB" : "NUMPAT", topic ? topic : "", n,
                     want);
        usleep(10000);
    }
}

static void redis_kill_pubsub(void)
{
    redisContext *c = redisConnect("127.0.0.1", (int)redis_port);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "CLIENT KILL TYPE pubsub");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer >= 1);
    freeReplyObject(r);
    redisFree(c);
}

static void publish_from(mnode *m, unsigned w, const char *topic, int n)
{
    int before = atomic_load(&m->rec[w].pubs);
    mcall c = {.r = &m->rec[w], .topic = topic, .n = n};
    dx_test_on_loop(m->loop[w], do_mpub, &c);
    wait_atomic(&m->rec[w].pubs, before + n, "publish completions");
    assert_int_equal(atomic_load(&m->rec[w].pub_errs), 0);
}

static void test_relay_one_subscription_per_node(void **state)
{
    (void)state;
    redis_start();
    mnode m;
    mnode_start(&m);
    mnode_wait_healthy(&m);
    static const char *const topic = "relay.room";

    /* every worker subscribes (twice): one Redis subscription for the node */
    for (unsigned i = 0; i < MW; i++) {
        m.rec[i].topic = topic;
        mcall c = {.r = &m.rec[i], .topic = topic, .n = 2};
        dx_test_on_loop(m.loop[i], do_msub, &c);
    }
    for (unsigned i = 0; i < MW; i++) {
        wait_atomic(&m.rec[i].subs, 2, "subscribe completions");
        assert_int_equal(atomic_load(&m.rec[i].sub_errs), 0);
    }
    assert_int_equal(redis_numsub(topic), 1);
    dx__bus_stats st;
    dx__bus_stats_get(m.bus, &st);
    assert_int_equal(st.bus_subscriptions, 1);

    /* every entry reaches every worker, in order, one forward per worker */
    publish_from(&m, 1, topic, 50);
    for (unsigned i = 0; i < MW; i++)
        wait_got(&m.rec[i], 50, "live entries through the owner");
    dx__bus_stats_get(m.bus, &st);
    assert_int_equal(st.relayed, 50 * MW);

    /* every pub/sub connection killed: publishes meanwhile are read back,
     * later ones come live, each worker has every offset once, in order */
    redis_kill_pubsub();
    publish_from(&m, 2, topic, 20);
    mnode_wait_healthy(&m);
    wait_numsub(topic, 1, "subscribed again by the owner alone");
    publish_from(&m, 3, topic, 20);
    for (unsigned i = 0; i < MW; i++) {
        wait_got(&m.rec[i], 90, "entries after the pub/sub connections were lost");
        assert_int_equal(atomic_load(&m.rec[i].last), 90);
        assert_int_equal(atomic_load(&m.rec[i].disorder), 0);
        assert_int_equal(atomic_load(&m.rec[i].got), 90);
    }

    /* everyone leaves: unsubscribed in Redis */
    for (unsigned i = 0; i < MW; i++) {
        mcall c = {.r = &m.rec[i], .topic = topic, .n = 2};
        dx_test_on_loop(m.loop[i], do_mleave, &c);
    }
    wait_numsub(topic, 0, "after every worker left");

    /* churn: every worker subscribes and leaves 8 topics 25 times each at
     * once, and a pattern +1/-1: nothing stays subscribed */
    static const char *const churn[8] = {"ch.a", "ch.b", "ch.c", "ch.d", "ch.e", "ch.f", "ch.g", "ch.h"};
    for (unsigned i = 0; i < MW; i++)
        atomic_store(&m.rec[i].subs, 0);
    for (int k = 0; k < 8; k++) {
        for (unsigned i = 0; i < MW; i++) {
            mcall c = {.r = &m.rec[i], .topic = churn[k], .n = 25, .leave = true};
            dx_test_on_loop(m.loop[i], do_msub, &c);
            mcall p = {.r = &m.rec[i], .topic = "ch.*", .n = 1, .delta = (k % 2) ? -1 : 1};
            dx_test_on_loop(m.loop[i], do_mpattern, &p);
        }
    }
    for (unsigned i = 0; i < MW; i++)
        wait_atomic(&m.rec[i].subs, 8 * 25, "churn subscribe completions");
    for (int k = 0; k < 8; k++)
        wait_numsub(churn[k], 0, "after the churn");
    wait_numsub(NULL, 0, "patterns after the churn");
    /* a pattern held by every worker: one PSUBSCRIBE for the node */
    for (unsigned i = 0; i < MW; i++) {
        mcall p = {.r = &m.rec[i], .topic = "pt.*", .n = 1, .delta = 1};
        dx_test_on_loop(m.loop[i], do_mpattern, &p);
    }
    wait_numsub(NULL, 1, "a pattern on every worker");
    for (unsigned i = 0; i < MW; i++) {
        mcall p = {.r = &m.rec[i], .topic = "pt.*", .n = 1, .delta = -1};
        dx_test_on_loop(m.loop[i], do_mpattern, &p);
    }
    wait_numsub(NULL, 0, "the pattern left by every worker");
    dx__bus_stats_get(m.bus, &st);
    assert_int_equal(st.bus_subscriptions, 0);

    /* freed while entries are in flight between workers (queued, posted) */
    static const char *const fl = "relay.flight";
    for (unsigned i = 0; i < MW; i++) {
        m.rec[i].topic = fl;
        atomic_store(&m.rec[i].got, 0);
        atomic_store(&m.rec[i].last, 0);
        atomic_store(&m.rec[i].subs, 0);
        mcall c = {.r = &m.rec[i], .topic = fl, .n = 1};
        dx_test_on_loop(m.loop[i], do_msub, &c);
    }
    for (unsigned i = 0; i < MW; i++)
        wait_atomic(&m.rec[i].subs, 1, "subscribe completions");
    mcall pc = {.r = &m.rec[0], .topic = fl, .n = 300};
    dx_test_on_loop(m.loop[0], do_mpub, &pc);
    wait_got(&m.rec[1], 1, "the first entry in flight");
    mnode_free(&m);
    redis_stop();
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster_users_presence_disconnect),
        cmocka_unit_test(test_relay_one_subscription_per_node),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    redis_stop();
    return rc;
}
