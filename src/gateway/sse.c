/* src/gateway/sse.c: Server-Sent Events (placeholder until the library's
 * streaming HTTP answers land; replaced in the same issue). */
#include "gateway/gw.h"

void gw_sse_request(gw_worker *k, dx_http_req *req)
{
    (void)k;
    (void)dx_http_reply(req, 503, "application/json", NULL, "{\"error\":\"SSE not available yet\"}", 33);
}
void gw_sse_ready(gw_conn *g) { (void)g; }
void gw_sse_deliver(gw_conn *g, dx__bus_topic *t, dx__gw_entry *e) { (void)g; (void)t; (void)e; }
void gw_sse_close(gw_conn *g, const char *why) { (void)g; (void)why; }
void gw_sse_tick(gw_worker *k) { (void)k; }
size_t gw_sse_buffered(gw_conn *g) { (void)g; return 0; }
