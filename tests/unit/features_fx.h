/*
 * tests/unit/features_fx.h: the state of the gateway-features hammer
 * (test_hammer_features.c) shared with features_fx.c, which holds its
 * helpers (random choices, violations, payloads, records, the ext pattern)
 * and its peers: raw TCP peers and dx_client peers with their callbacks.
 * test_hammer_features.c keeps the server side, deferred answers, timers,
 * watches, the driver and the test. One program, one hammer: the state is
 * the global H.
 */
#ifndef DX_FEATURES_FX_H
#define DX_FEATURES_FX_H

#include "hammer_fx.h"

#include "duplex/client.h"
#include "duplex/server.h"

#define MAX_PEER 48
#define MAX_CL 12
#define MAX_OPEN 256
#define MAX_PEND 256
#define MAX_TIMERS 32
#define MAX_MSGS 4096
#define EXT_SIZE 40
#define EVENT_BUDGET 5000
#define STEP_BUDGET 2000
#define SAFETY_MS 120000

/* ---- state --------------------------------------------------------------------------- */

enum { R_NEW = 0, R_OPEN, R_CLOSED, R_DROPPED, R_NEVER };

/* One server-side connection, from on_upgrade on. */
typedef struct crec {
    struct crec *next;
    int state;
    int accepted;  /* the upgrade was accepted: on_open may come */
    long acc_step; /* step at which dx_upgrade_accept returned 0 (0: it did not) */
    int lost;      /* a shutdown or free came before on_open */
    int left;      /* its peer left right after the answer */
    long dbg;
    char remote[64];
    struct clinst *ci;
    int is_cl;     /* its peer is a dx_client (else a raw peer) */
    int peer;      /* index and generation of the peer it belongs to */
    unsigned gen;
    unsigned tag;  /* ext pattern */
    int paused, closing;
    uint32_t last_in;
    uint32_t *sent; /* sequence numbers queued for the peer, in order */
    size_t nsent, capsent;
    dx_conn *c;
} crec;

typedef struct pend {
    dx_upgrade *h;
    crec *r;
    long not_before; /* round step before which it is not answered: past the handshake timeout */
} pend;

typedef struct peer {
    int fd; /* -1: none */
    unsigned gen;
    int noread, shut_wr, head_done, refused;
    uint32_t out_seq;
    crec *rec;
    size_t next_idx;
    uint8_t in[70000];
    size_t inlen;
} peer;

/* One dx_client (no reconnect: one connection at most); kept until the end
 * so that a callback after its free is seen, not a use-after-free. */
typedef struct clinst {
    struct clinst *next;
    dx_client *cl; /* NULL once freed */
    int slot;
    unsigned gen;
    int open, closes, opens, paused;
    crec *rec;
    size_t next_idx;
    uint32_t out_seq;
} clinst;

typedef struct htimer {
    dx_timer *t;
    int slot;
} htimer;

typedef struct hammer {
    uint64_t rng;
    uint64_t vnow;
    dx_test_seams ts;
    dx_loop *loop;
    dx_server *srv;
    unsigned port;
    int srv_freed, shut, shut_checked;
    crec *open[MAX_OPEN];
    size_t nopen;
    crec *recs;
    unsigned tags;
    pend *pends[MAX_PEND];
    size_t npend;
    peer peers[MAX_PEER];
    clinst *cl[MAX_CL];
    unsigned cl_gen[MAX_CL];
    clinst *clinsts;
    int tls;
    char crt[128], key[128], dir[64];
    htimer *timers[MAX_TIMERS];
    dx_watch *watch[2];
    int pipes[2][2];
    dx_msg *msgs[MAX_MSGS];
    size_t nmsgs;
    uint32_t seq;
    long events, steps, round_events, round_steps;
    int endgame, free_where, do_shut, round_done;
    long violations;
    char first_violation[240];
    /* counts */
    long opens, closes, dropped, deferred, answered_ok, answered_closed, refused_now, timers_fired, watches_fired,
        posts_run, shut_checks, idle_checks, shared_sends, copied_sends, elimits, cl_opens, cl_msgs_ok, cl_frees_in_cb, tls_rounds, pauses, resumes, peer_msgs_ok, srv_msgs_ok, frees_in_cb;
} hammer;

extern hammer H;

/* ---- features_fx.c: helpers ---- */

/* Random choices from H.rng (seeded: DX_HAMMER_SEED replays them). */
int chance(unsigned percent);
int check_payload(const uint8_t *p, size_t len, uint32_t *seq);
void event(void);
void ext_fill(dx_conn *c, unsigned tag);
crec *live_rec(dx_conn *c, void *ud, const char *what);
size_t make_payload(uint8_t *out, uint32_t seq, size_t len);
unsigned pick(unsigned n);
crec *random_open(void);
void sent_push(crec *r, uint32_t seq);
void violation(const char *what, long a, long b);
uint64_t vnow(void *ud);

/* ---- features_fx.c: peers ---- */

void answer_then_leave(void);
void cl_free(clinst *ci, int in_cb);
void cl_step(void);
void peer_close(peer *p, int rst);
void peer_step(int idx);

/* ---- test_hammer_features.c: the server side the peers call back ---- */

void answer(size_t i);
void srv_acts(crec *self);

#endif
