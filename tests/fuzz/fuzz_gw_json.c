/*
 * tests/fuzz/fuzz_gw_json.c: the JSON dialect of src/gateway/dialect.c.
 *
 * Input: byte 0 picks the target; the rest is the text.
 *  - byte 0 even: a client request. The parser never crashes; a refusal
 *    carries a known code and a reason, and its err frame is valid JSON; an
 *    accepted pub re-encodes into a msg that jansson parses, whose data/b64
 *    is the published payload (the same string, the same JSON value, the
 *    same bytes), that dx__gw_msg_encode_to writes byte for byte the same,
 *    and whose SSE event holds it on one data line.
 *  - byte 0 odd: an SSE position list (bit 1: with epochs). Whatever parses
 *    re-encodes (dx__gw_sse_id_encode) and parses back to the same
 *    positions; with epochs, the encoding is the input itself (the form is
 *    canonical).
 * abort() when an invariant breaks.
 */
#include "gateway/dialect.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

static void request(const uint8_t *p, size_t len)
{
    dx__gw_req req;
    dx__gw_req_err err;
    dx_buf b;
    dx_buf_init(&b, NULL);
    int rc = dx__gw_req_parse(NULL, p, len, 0, &req, &err);
    if (rc) {
        check(rc == DX_EPROTO || rc == DX_ENOMEM);
        check(err.code == 4400 || err.code == 4404 || err.code == 4413 || err.code == 4503);
        check(err.reason && *err.reason);
        check(dx__gw_err_encode(&b, 0, err.has_id ? (int64_t)err.id : -1, err.code, err.reason) == 0);
        json_t *j = json_loadb((const char *)dx_buf_head(&b), b.len, JSON_REJECT_DUPLICATES, NULL);
        check(j != NULL);
        json_decref(j);
        dx_buf_deinit(&b);
        return;
    }
    check(req.op >= DX__GW_OP_SUB && req.op <= DX__GW_OP_REFRESH);
    check(!req.has_id || req.id <= DX__GW_JSON_MAX_INT);
    if (req.op == DX__GW_OP_PUB) {
        check(dx__gw_msg_encode(&b, 0, req.topic, req.topic_len, 1, "e", 1, req.kind, req.payload,
                                req.payload_len, "p.*", 3) == 0);
        json_t *m = json_loadb((const char *)dx_buf_head(&b), b.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
        check(m != NULL);
        json_t *t = json_object_get(m, "topic");
        check(json_string_length(t) == req.topic_len && !memcmp(json_string_value(t), req.topic, req.topic_len));
        if (req.kind == DX__GW_KIND_TEXT) {
            json_t *d = json_object_get(m, "data");
            check(json_is_string(d) && json_string_length(d) == req.payload_len);
            check(!req.payload_len || !memcmp(json_string_value(d), req.payload, req.payload_len));
        } else if (req.kind == DX__GW_KIND_JSON) {
            json_t *want = json_loadb((const char *)req.payload, req.payload_len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                                      NULL);
            check(want != NULL);
            check(json_equal(json_object_get(m, "data"), want));
            json_decref(want);
        } else {
            json_t *d = json_object_get(m, "b64");
            check(json_is_string(d));
            size_t el = json_string_length(d);
            uint8_t *dec = malloc(el / 4 * 3 + 1);
            check(dec != NULL);
            long n = dx__gw_b64_decode(dec, json_string_value(d), el);
            check(n == (long)req.payload_len && (!n || !memcmp(dec, req.payload, req.payload_len)));
            free(dec);
        }
        json_decref(m);
        size_t need = 0, got = 0;
        check(dx__gw_msg_encode_to(NULL, 0, &need, req.topic, req.topic_len, 1, "e", 1, req.kind, req.payload,
                                   req.payload_len, "p.*", 3) == DX_ENOSPC && need == b.len);
        uint8_t *to = malloc(need);
        check(to != NULL);
        check(dx__gw_msg_encode_to(to, need, &got, req.topic, req.topic_len, 1, "e", 1, req.kind, req.payload,
                                   req.payload_len, "p.*", 3) == 0 && got == need);
        check(!memcmp(to, dx_buf_head(&b), need));
        free(to);
        dx__gw_pos pos = {"t", 1, 1, "e", 1};
        dx_buf ev;
        dx_buf_init(&ev, NULL);
        check(dx__gw_sse_event_encode(&ev, 0, dx_buf_head(&b), b.len, &pos, 1) == 0);
        dx_buf_deinit(&ev);
    } else if (req.op == DX__GW_OP_SUB) {
        check(dx__gw_ack_sub_encode(&b, 0, req.has_id ? (int64_t)req.id : -1, req.topic, req.topic_len,
                                    req.has_since ? req.since_offset : 0, req.since_epoch, req.since_epoch_len,
                                    req.has_since) == 0);
        json_t *j = json_loadb((const char *)dx_buf_head(&b), b.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
        check(j != NULL);
        json_decref(j);
    }
    dx_buf_deinit(&b);
    dx__gw_req_free(&req);
}

static void positions(const char *s, size_t len, bool with_epoch)
{
    dx__gw_pos pos[8], back[8];
    int n = dx__gw_pos_parse(s, len, with_epoch, pos, 8);
    if (n < 0) {
        check(n == DX_EINVAL || n == DX_ELIMIT);
        return;
    }
    if (!with_epoch)
        for (int i = 0; i < n; i++)
            pos[i].epoch = "e", pos[i].epoch_len = 1;
    dx_buf b;
    dx_buf_init(&b, NULL);
    check(dx__gw_sse_id_encode(&b, 0, pos, (size_t)n) == 0);
    if (with_epoch)
        check(b.len == len && (!len || !memcmp(dx_buf_head(&b), s, len)));
    check(dx__gw_pos_parse((const char *)dx_buf_head(&b), b.len, true, back, 8) == n);
    for (int i = 0; i < n; i++) {
        check(back[i].topic_len == pos[i].topic_len && !memcmp(back[i].topic, pos[i].topic, pos[i].topic_len));
        check(back[i].offset == pos[i].offset);
        check(back[i].epoch_len == pos[i].epoch_len && !memcmp(back[i].epoch, pos[i].epoch, pos[i].epoch_len));
    }
    dx_buf_deinit(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    if (data[0] & 1)
        positions((const char *)data + 1, size - 1, data[0] & 2);
    else
        request(data + 1, size - 1);
    return 0;
}
