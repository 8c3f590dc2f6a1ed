/*
 * src/ws/conn_deflate.c: a connection's permessage-deflate (RFC 7692):
 * the endpoint's shared zlib context and its statistics, and the server's
 * answer to a client's offers under the memory budget. The compression
 * itself is src/proto/deflate.c; the session uses it once negotiated.
 *
 * Layer: ws.
 */
#include "ws/ws.h"

#include "core/log.h"

/* The peer's address for a log line. */
typedef struct addr_str {
    char s[64];
} addr_str;

static addr_str remote(const dx_conn *c)
{
    addr_str a;
    dx_conn_remote(c, a.s, sizeof a.s);
    return a;
}

bool dx__deflate_options_valid(const dx_deflate_options *o)
{
    unsigned sb = o->server_max_window_bits, cb = o->client_max_window_bits;
    return (sb == 0 || (sb >= 8 && sb <= 15)) && (cb == 0 || (cb >= 8 && cb <= 15)) && o->level >= 0 &&
           o->level <= 9 && o->mem_level >= 0 && o->mem_level <= 9;
}

int dx__ep_deflate_start(dx__ep *ep)
{
    if (!ep->opt.deflate.enable)
        return 0;
    ep->pmd = dx__pmd_ctx_new(ep->loop->seams, &ep->opt.deflate);
    return ep->pmd ? 0 : DX_ENOMEM;
}

void dx__ep_deflate_stats(const dx__ep *ep, dx_server_stats *st)
{
    if (!ep->pmd)
        return;
    const dx__pmd_stats *z = dx__pmd_ctx_stats(ep->pmd);
    st->deflate_messages_out = z->msgs_out;
    st->deflate_bytes_raw = z->raw_out;
    st->deflate_bytes_wire = z->wire_out;
    st->inflate_messages_in = z->msgs_in;
    st->inflate_bytes_wire = z->wire_in;
    st->inflate_bytes_raw = z->raw_in;
    st->deflate_mem = dx__pmd_ctx_mem(ep->pmd);
}

/*
 * The server's half of RFC 7692 §7 for the offers in the request: the
 * first acceptable one wins (declined ones are logged at debug). The memory
 * budget decides how much state the connection may hold:
 *  - what zlib holds now plus a connection that keeps both contexts
 *    (its own compressor and decompressor, at the windows negotiated) fits
 *    in mem_budget: the client's parameters (and our options) apply;
 *  - it does not fit, but what zlib holds now does: the answer carries both
 *    no_context_takeover parameters, so an idle connection holds nothing
 *    (shared compressor and decompressor; a message split across reads
 *    holds a decompressor only until it ends): counted in deflate_downgrades;
 *  - zlib already holds mem_budget or more: no compression for this
 *    connection (deflate_refused).
 */
void dx__conn_negotiate_deflate(dx_conn *c, const dx_ws_request *ws)
{
    dx__ep *ep = dx__conn_ep(c);
    if (!ep->pmd || !ws->n_exts)
        return;
    const dx_deflate_options *o = &ep->opt.deflate;
    size_t budget = o->mem_budget ? o->mem_budget : DX_PMD_DEFAULT_MEM_BUDGET;
    size_t used = dx__pmd_ctx_mem(ep->pmd);
    size_t reserved = dx__pmd_ctx_reserved(ep->pmd);
    dx__pmd_params p;
    char resp[DX__PMD_RESPONSE_MAX];
    const char *why = NULL;
    if (!dx__pmd_server_accept(o, ws->exts, ws->n_exts, false, &p, resp, sizeof resp, &why)) {
        if (why)
            dx__log(dx__conn_ep(c)->loop->log, DX_LOG_DEBUG, "conn=%llu permessage-deflate offer declined remote=%s: %s",
                    (unsigned long long)c->id, remote(c).s, why);
        return;
    }
    if (used >= budget) {
        ep->st.deflate_refused++;
        dx__log(dx__conn_ep(c)->loop->log, DX_LOG_DEBUG,
                "conn=%llu permessage-deflate declined remote=%s: zlib memory %zu >= mem_budget %zu",
                (unsigned long long)c->id, remote(c).s, used, budget);
        return;
    }
    size_t cost = 0;
    if (!p.server_nct)
        cost += dx__pmd_deflate_cost(p.server_bits, dx__pmd_ctx_mem_level(ep->pmd));
    if (!p.client_nct)
        cost += dx__pmd_inflate_cost(p.client_bits);
    if (cost && (reserved + cost > budget || used + cost > budget)) {
        if (!dx__pmd_server_accept(o, ws->exts, ws->n_exts, true, &p, resp, sizeof resp, &why)) {
            ep->st.deflate_refused++; /* no acceptable offer without context takeover: none at all */
            dx__log(dx__conn_ep(c)->loop->log, DX_LOG_DEBUG, "conn=%llu permessage-deflate declined remote=%s: over mem_budget, %s",
                    (unsigned long long)c->id, remote(c).s, why ? why : "no offer without context takeover");
            return;
        }
        ep->st.deflate_downgrades++;
        dx__log(dx__conn_ep(c)->loop->log, DX_LOG_DEBUG,
                "conn=%llu permessage-deflate without context takeover remote=%s: zlib memory %zu (reserved "
                "%zu) + %zu > mem_budget %zu",
                (unsigned long long)c->id, remote(c).s, used, reserved, cost, budget);
        cost = 0;
    }
    /* Before the 101 (and before the application decides): without the
     * memory the extension is simply not accepted. */
    c->s.pmd = dx__pmd_new(ep->pmd, DX_ROLE_SERVER, &p);
    if (c->s.pmd)
        dx__pmd_reserve(c->s.pmd, cost);
}

int dx_conn_deflate(const dx_conn *c, dx_deflate_info *out)
{
    if (!c || !(c->flags & CF_SESSION) || !c->s.pmd)
        return 0;
    if (out) {
        const dx__pmd_params *p = dx__pmd_params_of(c->s.pmd);
        *out = (dx_deflate_info){.server_no_context_takeover = p->server_nct,
                                 .client_no_context_takeover = p->client_nct,
                                 .server_max_window_bits = p->server_bits,
                                 .client_max_window_bits = p->client_bits};
    }
    return 1;
}
