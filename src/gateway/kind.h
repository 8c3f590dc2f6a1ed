/*
 * src/gateway/kind.h: a message's kind (GATEWAY.md "Topics"): json, text or
 * binary, fixed when it is published and kept in every delivery. Shared by
 * the history (entries) and the dialects (parsing and encoding). 0 is not a
 * kind, so a zeroed struct holds none.
 */
#ifndef DX_GATEWAY_KIND_H
#define DX_GATEWAY_KIND_H

typedef enum dx__gw_kind {
    DX__GW_KIND_JSON = 1,
    DX__GW_KIND_TEXT = 2,
    DX__GW_KIND_BINARY = 3,
} dx__gw_kind;

#endif
