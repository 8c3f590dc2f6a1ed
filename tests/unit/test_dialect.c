/* tests/unit/test_dialect.c: src/gateway/dialect.c — the JSON dialect's
 * request parser, the server-frame encoders (every output re-parsed by
 * jansson), SSE events and positions, strict base64, allocation failures. */
#include "testutil.h"

#include "gateway/dialect.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *s, dx__gw_req *req, dx__gw_req_err *err)
{
    return dx__gw_req_parse(NULL, (const uint8_t *)s, strlen(s), 0, req, err);
}

/* ---- requests, table-driven --------------------------------------------- */

typedef struct row {
    const char *in;
    int code;                   /* 0: accepted, else the err code */
    int op;                     /* when accepted */
    int has_id;                 /* accepted: req.has_id; refused: err.has_id */
    uint64_t id;
} row;

static const row rows[] = {
    /* every op, with and without id */
    {"{\"op\":\"sub\",\"topic\":\"a\"}", 0, DX__GW_OP_SUB, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":7}", 0, DX__GW_OP_SUB, 1, 7},
    {"{\"op\":\"unsub\",\"topic\":\"a\",\"id\":0}", 0, DX__GW_OP_UNSUB, 1, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"x\"}", 0, DX__GW_OP_PUB, 0, 0},
    {"{\"op\":\"presence\",\"topic\":\"a\",\"id\":3}", 0, DX__GW_OP_PRESENCE, 1, 3},
    {"{\"op\":\"refresh\",\"token\":\"t.j.w\",\"id\":9}", 0, DX__GW_OP_REFRESH, 1, 9},
    {" \n{\"topic\":\"a\",\"op\":\"sub\"}\t", 0, DX__GW_OP_SUB, 0, 0}, /* whitespace, any order */
    {"{\"op\":\"sub\",\"topic\":\"a\",\"extra\":[1,2]}", 0, DX__GW_OP_SUB, 0, 0}, /* unknown members ignored */
    /* ids */
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":9007199254740991}", 0, DX__GW_OP_SUB, 1, 9007199254740991ULL},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":9007199254740992}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":-1}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":1.0}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":1e0}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":\"1\"}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":null}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":true}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"id\":99999999999999999999}", 4400, 0, 0, 0},
    /* not an object, bad JSON */
    {"", 4400, 0, 0, 0},
    {"[]", 4400, 0, 0, 0},
    {"\"sub\"", 4400, 0, 0, 0},
    {"null", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\"", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\"} {}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",}", 4400, 0, 0, 0},
    {"{'op':'sub'}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"\xff\"}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\\ud800\"}", 4400, 0, 0, 0},       /* lone surrogates */
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\\udc00x\"}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xed\xa0\x80\"}", 4400, 0, 0, 0}, /* CESU-8 */
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\\ud83d\\ude00\"}", 0, DX__GW_OP_PUB, 0, 0},
    /* duplicate keys */
    {"{\"op\":\"sub\",\"op\":\"sub\",\"topic\":\"a\"}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":{\"k\":1,\"k\":2}}", 4400, 0, 0, 0},
    /* op */
    {"{\"topic\":\"a\",\"id\":4}", 4400, 0, 1, 4},
    {"{\"op\":1,\"topic\":\"a\",\"id\":4}", 4400, 0, 1, 4},
    {"{\"op\":\"SUB\",\"topic\":\"a\",\"id\":4}", 4404, 0, 1, 4},
    {"{\"op\":\"subscribe\",\"topic\":\"a\"}", 4404, 0, 0, 0},
    {"{\"op\":\"su\",\"topic\":\"a\"}", 4404, 0, 0, 0},
    {"{\"op\":\"sub\\u0000\",\"topic\":\"a\"}", 4404, 0, 0, 0},
    {"{\"op\":\"msg\",\"topic\":\"a\",\"id\":5}", 4404, 0, 1, 5},
    /* topic */
    {"{\"op\":\"sub\",\"id\":2}", 4400, 0, 1, 2},
    {"{\"op\":\"unsub\",\"topic\":1}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":null,\"data\":1}", 4400, 0, 0, 0},
    {"{\"op\":\"presence\",\"topic\":[\"a\"]}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"\"}", 0, DX__GW_OP_SUB, 0, 0}, /* the topic module judges names */
    /* since */
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":0,\"epoch\":\"\"}}", 0, DX__GW_OP_SUB, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":9007199254740991,\"epoch\":\"e\"}}", 0, DX__GW_OP_SUB, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":9007199254740992,\"epoch\":\"e\"}}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":-1,\"epoch\":\"e\"}}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":1.5,\"epoch\":\"e\"}}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":\"1\",\"epoch\":\"e\"}}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":1}}", 0, DX__GW_OP_SUB, 0, 0}, /* extension: current epoch */
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"epoch\":\"e\"}}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":{\"offset\":1,\"epoch\":7}}", 4400, 0, 0, 0},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":[1,\"e\"],\"id\":1}", 4400, 0, 1, 1},
    {"{\"op\":\"sub\",\"topic\":\"a\",\"since\":null}", 4400, 0, 0, 0},
    /* pub: exactly one of data / b64 */
    {"{\"op\":\"pub\",\"topic\":\"a\"}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":1,\"b64\":\"\"}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"b64\":1}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"b64\":\"Zm9v\"}", 0, DX__GW_OP_PUB, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"b64\":\"Zm9\"}", 4400, 0, 0, 0},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"b64\":\"Zm9v\\n\",\"id\":6}", 4400, 0, 1, 6},
    {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":null}", 0, DX__GW_OP_PUB, 0, 0},
    /* refresh */
    {"{\"op\":\"refresh\"}", 4400, 0, 0, 0},
    {"{\"op\":\"refresh\",\"token\":null}", 4400, 0, 0, 0},
    {"{\"op\":\"refresh\",\"topic\":\"a\"}", 4400, 0, 0, 0},
};

static void test_request_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const row *r = &rows[i];
        dx__gw_req req;
        dx__gw_req_err err;
        int rc = parse(r->in, &req, &err);
        if (r->code == 0) {
            if (rc != 0)
                fail_msg("row %zu %s: refused %d (%s)", i, r->in, err.code, err.reason);
            assert_int_equal(req.op, r->op);
            assert_int_equal(req.has_id, r->has_id);
            if (r->has_id)
                assert_true(req.id == r->id);
        } else {
            if (rc != DX_EPROTO || err.code != r->code)
                fail_msg("row %zu %s: rc %d code %d, want %d", i, r->in, rc, err.code, r->code);
            assert_non_null(err.reason);
            assert_true(strlen(err.reason) > 0);
            assert_int_equal(err.has_id, r->has_id);
            if (r->has_id)
                assert_true(err.id == r->id);
            assert_null(req.root_); /* nothing kept */
        }
        dx__gw_req_free(&req);
        dx__gw_req_free(&req); /* safe twice */
    }
}

static void test_request_fields(void **state)
{
    (void)state;
    dx__gw_req req;
    dx__gw_req_err err;
    assert_int_equal(parse("{\"op\":\"sub\",\"id\":12,\"topic\":\"user:42\",\"since\":{\"offset\":17,"
                           "\"epoch\":\"e\\u0000x\"}}",
                           &req, &err),
                     0);
    assert_int_equal(req.topic_len, 7);
    assert_memory_equal(req.topic, "user:42", 7);
    assert_true(req.has_since);
    assert_true(req.since_offset == 17);
    assert_int_equal(req.since_epoch_len, 3); /* \u0000 kept: lengths, not NULs */
    assert_memory_equal(req.since_epoch, "e\0x", 3);
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"sub\",\"topic\":\"t\"}", &req, &err), 0);
    assert_false(req.has_since);
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"pub\",\"topic\":\"t\",\"data\":\"h\\u00e9\\n\"}", &req, &err), 0);
    assert_int_equal(req.kind, DX__GW_KIND_TEXT);
    assert_int_equal(req.payload_len, 4);
    assert_memory_equal(req.payload, "h\xc3\xa9\n", 4);
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"pub\",\"topic\":\"t\",\"data\":{ \"b\" : [1, 2.5, \"x\"], \"a\": null }}",
                           &req, &err),
                     0);
    assert_int_equal(req.kind, DX__GW_KIND_JSON);
    assert_int_equal(req.payload_len, strlen("{\"b\":[1,2.5,\"x\"],\"a\":null}"));
    assert_memory_equal(req.payload, "{\"b\":[1,2.5,\"x\"],\"a\":null}", req.payload_len); /* compact, order kept */
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"pub\",\"topic\":\"t\",\"data\":\"\"}", &req, &err), 0);
    assert_int_equal(req.kind, DX__GW_KIND_TEXT);
    assert_int_equal(req.payload_len, 0);
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"pub\",\"topic\":\"t\",\"b64\":\"\"}", &req, &err), 0);
    assert_int_equal(req.kind, DX__GW_KIND_BINARY);
    assert_int_equal(req.payload_len, 0);
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"pub\",\"topic\":\"t\",\"b64\":\"AP8A\"}", &req, &err), 0);
    assert_int_equal(req.kind, DX__GW_KIND_BINARY);
    assert_int_equal(req.payload_len, 3);
    assert_memory_equal(req.payload, "\x00\xff\x00", 3);
    dx__gw_req_free(&req);

    assert_int_equal(parse("{\"op\":\"refresh\",\"token\":\"abc.def\"}", &req, &err), 0);
    assert_int_equal(req.token_len, 7);
    assert_memory_equal(req.token, "abc.def", 7);
    dx__gw_req_free(&req);

    /* the input may be reused as soon as parse returns */
    char buf[] = "{\"op\":\"sub\",\"topic\":\"abc\"}";
    assert_int_equal(parse(buf, &req, &err), 0);
    memset(buf, 'z', sizeof buf - 1);
    assert_memory_equal(req.topic, "abc", 3);
    dx__gw_req_free(&req);
}

static void test_size_and_depth_bounds(void **state)
{
    (void)state;
    dx__gw_req req;
    dx__gw_req_err err;
    const char *s = "{\"op\":\"sub\",\"topic\":\"a\"}";
    size_t n = strlen(s);
    assert_int_equal(dx__gw_req_parse(NULL, (const uint8_t *)s, n, n, &req, &err), 0);
    dx__gw_req_free(&req);
    assert_int_equal(dx__gw_req_parse(NULL, (const uint8_t *)s, n, n - 1, &req, &err), DX_EPROTO);
    assert_int_equal(err.code, 4413);

    /* data nested to exactly the bound (the request is level 1), then one more */
    for (int extra = 0; extra < 2; extra++) {
        int levels = DX__GW_JSON_MAX_DEPTH - 1 + extra;
        char *b = malloc(64 + 2 * (size_t)levels);
        assert_non_null(b);
        size_t o = (size_t)sprintf(b, "{\"op\":\"pub\",\"topic\":\"a\",\"data\":");
        for (int i = 0; i < levels; i++)
            b[o++] = (char)(i % 2 ? '{' : '[');
        /* arrays hold arrays; objects need a key: use only arrays */
        o -= (size_t)levels;
        for (int i = 0; i < levels; i++)
            b[o++] = '[';
        for (int i = 0; i < levels; i++)
            b[o++] = ']';
        b[o++] = '}';
        b[o] = 0;
        int rc = parse(b, &req, &err);
        if (extra == 0) {
            assert_int_equal(rc, 0);
            assert_int_equal(req.kind, DX__GW_KIND_JSON);
        } else {
            assert_int_equal(rc, DX_EPROTO);
            assert_int_equal(err.code, 4400);
            assert_string_equal(err.reason, "JSON nested too deeply");
        }
        dx__gw_req_free(&req);
        free(b);
    }
    /* brackets inside strings (with escaped quotes) do not count */
    char deep_str[400];
    size_t o = (size_t)sprintf(deep_str, "{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\\\"");
    for (int i = 0; i < 200; i++)
        deep_str[o++] = '[';
    strcpy(deep_str + o, "\"}");
    assert_int_equal(parse(deep_str, &req, &err), 0);
    dx__gw_req_free(&req);
    /* a million levels: refused before jansson recurses */
    size_t big = 1000000;
    char *b = malloc(big + 1);
    assert_non_null(b);
    memset(b, '[', big);
    b[big] = 0;
    assert_int_equal(dx__gw_req_parse(NULL, (const uint8_t *)b, big, big, &req, &err), DX_EPROTO);
    assert_int_equal(err.code, 4400);
    free(b);
}

/* ---- base64 ------------------------------------------------------------- */

static void test_b64(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        long n;                 /* -1: refused */
        const char *out;
    } v[] = {
        {"", 0, ""},           {"AA==", 1, "\x00"},  {"AAA=", 2, "\x00\x00"}, {"AAAA", 3, "\x00\x00\x00"},
        {"Zg==", 1, "f"},      {"Zm8=", 2, "fo"},    {"Zm9v", 3, "foo"},      {"Zm9vYg==", 4, "foob"},
        {"+/+/", 3, "\xfb\xff\xbf"},
        {"AB==", -1, NULL},    {"AAB=", -1, NULL},   {"A===", -1, NULL},      {"====", -1, NULL},
        {"=AAA", -1, NULL},    {"AA=A", -1, NULL},   {"AA==AAAA", -1, NULL},  {"AAAA====", -1, NULL},
        {"Zm9", -1, NULL},     {"Zm9v=", -1, NULL},  {" Zm9", -1, NULL},      {"Zm9\n", -1, NULL},
        {"-_-_", -1, NULL},    {"Zm9v\0\0\0\0", -1, NULL},
    };
    uint8_t out[16];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t len = strlen(v[i].in);
        if (i == sizeof v / sizeof v[0] - 1)
            len = 8; /* embedded NULs */
        long n = dx__gw_b64_decode(out, v[i].in, len);
        if (n != v[i].n)
            fail_msg("b64 %zu \"%s\": %ld, want %ld", i, v[i].in, n, v[i].n);
        if (n > 0)
            assert_memory_equal(out, v[i].out, (size_t)n);
    }
    /* every length 0..300 and random bytes: encode then decode is identity,
     * and the encoding is what the strict decoder accepts */
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    uint8_t src[300], dec[300];
    char enc[400];
    for (size_t n = 0; n <= sizeof src; n++) {
        ts.seams.random(ts.seams.ud, src, n);
        dx__gw_b64_encode(enc, src, n);
        assert_int_equal(dx__gw_b64_len(n), (n + 2) / 3 * 4);
        assert_int_equal(dx__gw_b64_decode(dec, enc, dx__gw_b64_len(n)), (long)n);
        assert_memory_equal(dec, src, n);
    }
}

/* ---- encoders ----------------------------------------------------------- */

/* Parses the readable bytes of `b` with jansson (strict) and returns the object. */
static json_t *reparse(const dx_buf *b)
{
    json_error_t e;
    json_t *j = json_loadb((const char *)dx_buf_head(b), b->len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!j)
        fail_msg("jansson refused %.*s: %s", (int)b->len, (const char *)dx_buf_head(b), e.text);
    assert_true(json_is_object(j));
    for (size_t i = 0; i < b->len; i++)
        assert_true(dx_buf_head(b)[i] != '\n' && dx_buf_head(b)[i] != '\r');
    return j;
}

static const char *keys_of(json_t *o, char *acc, size_t cap)
{
    const char *k;
    json_t *v;
    acc[0] = 0;
    json_object_foreach(o, k, v) {
        (void)v;
        strncat(acc, k, cap - strlen(acc) - 2);
        strcat(acc, ",");
    }
    return acc;
}

static void assert_str_member(json_t *o, const char *k, const void *p, size_t len)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_string(v));
    assert_int_equal(json_string_length(v), len);
    assert_memory_equal(json_string_value(v), p, len);
}

static void assert_int_member(json_t *o, const char *k, json_int_t x)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_integer(v));
    assert_true(json_integer_value(v) == x);
}

static void test_msg_encode(void **state)
{
    (void)state;
    dx_buf b;
    dx_buf_init(&b, NULL);
    char keys[256];

    assert_int_equal(dx__gw_msg_encode(&b, 0, "chat.r1", 7, 17, "ep1", 3, DX__GW_KIND_TEXT,
                                       (const uint8_t *)"hi", 2, NULL, 0),
                     0);
    assert_int_equal(b.len, strlen("{\"op\":\"msg\",\"topic\":\"chat.r1\",\"offset\":17,\"epoch\":\"ep1\",\"data\":\"hi\"}"));
    assert_memory_equal(dx_buf_head(&b), "{\"op\":\"msg\",\"topic\":\"chat.r1\",\"offset\":17,\"epoch\":\"ep1\",\"data\":\"hi\"}", b.len);
    json_t *j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,topic,offset,epoch,data,");
    json_decref(j);
    dx_buf_clear(&b);

    assert_int_equal(dx__gw_msg_encode(&b, 0, "user:9", 6, DX__GW_JSON_MAX_INT, "e", 1, DX__GW_KIND_BINARY,
                                       (const uint8_t *)"\x00\xff\x10\x80", 4, "user:*", 6),
                     0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,topic,offset,epoch,b64,pattern,");
    assert_str_member(j, "op", "msg", 3);
    assert_str_member(j, "topic", "user:9", 6);
    assert_int_member(j, "offset", (json_int_t)DX__GW_JSON_MAX_INT);
    assert_str_member(j, "b64", "AP8QgA==", 8);
    assert_str_member(j, "pattern", "user:*", 6);
    json_decref(j);
    dx_buf_clear(&b);

    /* kind json: the value itself; raw CR/LF between tokens become spaces */
    const char *val = "{\"a\":\r\n[1,\n2],\"s\":\"x\\ny\"}";
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e", 1, DX__GW_KIND_JSON, (const uint8_t *)val,
                                       strlen(val), NULL, 0),
                     0);
    j = reparse(&b);
    json_t *want = json_loads(val, 0, NULL);
    assert_true(json_equal(json_object_get(j, "data"), want));
    json_decref(want);
    json_decref(j);
    dx_buf_clear(&b);

    /* empty binary, empty text */
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 0, "", 0, DX__GW_KIND_BINARY, NULL, 0, NULL, 0), 0);
    j = reparse(&b);
    assert_str_member(j, "b64", "", 0);
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 0, "", 0, DX__GW_KIND_TEXT, NULL, 0, NULL, 0), 0);
    j = reparse(&b);
    assert_str_member(j, "data", "", 0);
    json_decref(j);
    dx_buf_clear(&b);

    /* refusals leave the buffer as it was */
    assert_int_equal(dx_buf_append(&b, "keep", 4, 0), 0);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, DX__GW_JSON_MAX_INT + 1, "e", 1, DX__GW_KIND_TEXT,
                                       (const uint8_t *)"x", 1, NULL, 0),
                     DX_EINVAL);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e", 1, DX__GW_KIND_JSON, NULL, 0, NULL, 0), DX_EINVAL);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e", 1, (enum dx__gw_kind)9, (const uint8_t *)"x", 1,
                                       NULL, 0),
                     DX_EINVAL);
    assert_int_equal(dx__gw_msg_encode(&b, 0, NULL, 3, 1, "e", 1, DX__GW_KIND_TEXT, (const uint8_t *)"x", 1,
                                       NULL, 0),
                     DX_EINVAL);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e", 1, DX__GW_KIND_TEXT, (const uint8_t *)"\xc3", 1,
                                       NULL, 0),
                     DX_EUTF8);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e\xff", 2, DX__GW_KIND_TEXT, (const uint8_t *)"x", 1,
                                       NULL, 0),
                     DX_EUTF8);
    /* max: exactly enough fits, one byte less is DX_ELIMIT */
    size_t need = 4 + strlen("{\"op\":\"msg\",\"topic\":\"t\",\"offset\":1,\"epoch\":\"e\",\"data\":\"x\"}");
    assert_int_equal(dx__gw_msg_encode(&b, need - 1, "t", 1, 1, "e", 1, DX__GW_KIND_TEXT, (const uint8_t *)"x",
                                       1, NULL, 0),
                     DX_ELIMIT);
    assert_int_equal(b.len, 4);
    assert_memory_equal(dx_buf_head(&b), "keep", 4);
    assert_int_equal(dx__gw_msg_encode(&b, need, "t", 1, 1, "e", 1, DX__GW_KIND_TEXT, (const uint8_t *)"x", 1,
                                       NULL, 0),
                     0);
    assert_int_equal(b.len, need);
    dx_buf_deinit(&b);
}

/* encode_to: the same bytes as encode, sized first, into exact memory */
static void test_msg_encode_to(void **state)
{
    (void)state;
    dx_buf b;
    dx_buf_init(&b, NULL);
    const uint8_t bin[] = {0, 1, 2, 0xff};
    assert_int_equal(dx__gw_msg_encode(&b, 0, "a.b", 3, 99, "ep", 2, DX__GW_KIND_BINARY, bin, 4, "a.*", 3), 0);
    size_t len = 0;
    assert_int_equal(dx__gw_msg_encode_to(NULL, 0, &len, "a.b", 3, 99, "ep", 2, DX__GW_KIND_BINARY, bin, 4,
                                          "a.*", 3),
                     DX_ENOSPC);
    assert_int_equal(len, b.len);
    uint8_t *dst = malloc(len + 1);
    assert_non_null(dst);
    dst[len - 1] = 0xAA;
    size_t len2 = 0;
    assert_int_equal(dx__gw_msg_encode_to(dst, len - 1, &len2, "a.b", 3, 99, "ep", 2, DX__GW_KIND_BINARY, bin,
                                          4, "a.*", 3),
                     DX_ENOSPC);
    assert_int_equal(dst[len - 1], 0xAA); /* nothing written */
    dst[len] = 0x55;
    assert_int_equal(dx__gw_msg_encode_to(dst, len, &len2, "a.b", 3, 99, "ep", 2, DX__GW_KIND_BINARY, bin, 4,
                                          "a.*", 3),
                     0);
    assert_int_equal(len2, len);
    assert_memory_equal(dst, dx_buf_head(&b), len);
    assert_int_equal(dst[len], 0x55); /* not one byte past */
    assert_int_equal(dx__gw_msg_encode_to(dst, len, &len2, "a.b", 3, 99, "e\xc3", 2, DX__GW_KIND_BINARY, bin,
                                          4, NULL, 0),
                     DX_EUTF8);
    free(dst);
    dx_buf_deinit(&b);
}

static void test_escaping(void **state)
{
    (void)state;
    /* every control character, quote, backslash, DEL, 2/3/4-byte UTF-8,
     * U+2028, U+FFFF, U+10FFFF */
    uint8_t s[128];
    size_t n = 0;
    for (int c = 0; c < 32; c++)
        s[n++] = (uint8_t)c;
    const char *rest = "\"\\/\x7f" "\xc3\xa9" "\xe2\x82\xac" "\xf0\x9f\x98\x80" "\xe2\x80\xa8" "\xef\xbf\xbf"
                       "\xf4\x8f\xbf\xbf" "end";
    memcpy(s + n, rest, strlen(rest));
    n += strlen(rest);
    dx_buf b;
    dx_buf_init(&b, NULL);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, (const char *)s, n, DX__GW_KIND_TEXT, s, n,
                                       (const char *)s, n),
                     0);
    for (size_t i = 0; i < b.len; i++)
        assert_true(dx_buf_head(&b)[i] >= 0x20);
    /* no \u escape other than \u00XX: surrogate escapes never appear */
    const char *p = (const char *)dx_buf_head(&b);
    for (size_t i = 0; i + 3 < b.len; i++)
        if (p[i] == '\\' && p[i + 1] == 'u')
            assert_true(p[i + 2] == '0' && p[i + 3] == '0');
    json_t *j = reparse(&b);
    assert_str_member(j, "data", s, n);
    assert_str_member(j, "epoch", s, n);
    assert_str_member(j, "pattern", s, n);
    json_decref(j);
    /* the short escapes are used where JSON has them */
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_err_encode(&b, 0, -1, 4400, "\b\f\n\r\t\"\\\x01\x1f"), 0);
    const char *want = "{\"op\":\"err\",\"code\":4400,\"reason\":\"\\b\\f\\n\\r\\t\\\"\\\\\\u0001\\u001f\"}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(dx_buf_head(&b), want, b.len);
    dx_buf_clear(&b);

    /* invalid UTF-8 is refused, never produced: lone and paired surrogates
     * (CESU-8), overlongs, truncations, bytes never valid, above U+10FFFF */
    static const char *bad[] = {"\xed\xa0\x80", "\xed\xbf\xbf", "\xed\xa0\xbd\xed\xb8\x80", "\xc0\xaf",
                                "\xe0\x80\xaf", "\xe2\x82", "\xf0\x9f\x98", "\xff", "\xfe", "\x80",
                                "\xf4\x90\x80\x80", "a\xc3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t bl = strlen(bad[i]);
        assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e", 1, DX__GW_KIND_TEXT, (const uint8_t *)bad[i],
                                           bl, NULL, 0),
                         DX_EUTF8);
        assert_int_equal(dx__gw_gap_encode(&b, 0, bad[i], bl, 1, 2), DX_EUTF8);
        dx__gw_str u = {bad[i], bl};
        assert_int_equal(dx__gw_ack_presence_encode(&b, 0, 1, 1, &u, 1), DX_EUTF8);
        assert_int_equal(b.len, 0);
    }
    dx_buf_deinit(&b);
}

static void test_ack_err_gap_encode(void **state)
{
    (void)state;
    dx_buf b;
    dx_buf_init(&b, NULL);
    char keys[256];
    json_t *j;

    assert_int_equal(dx__gw_ack_encode(&b, 0, -1), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,");
    assert_str_member(j, "op", "ack", 3);
    json_decref(j);
    dx_buf_clear(&b);

    assert_int_equal(dx__gw_ack_encode(&b, 0, 0), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,id,");
    assert_int_member(j, "id", 0);
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_ack_encode(&b, 0, (int64_t)DX__GW_JSON_MAX_INT + 1), DX_EINVAL);

    assert_int_equal(dx__gw_ack_sub_encode(&b, 0, (int64_t)DX__GW_JSON_MAX_INT, "user:a:b", 8, 0, "E-1", 3, true), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,id,topic,offset,epoch,recovered,");
    assert_int_member(j, "id", (json_int_t)DX__GW_JSON_MAX_INT);
    assert_str_member(j, "topic", "user:a:b", 8);
    assert_int_member(j, "offset", 0);
    assert_str_member(j, "epoch", "E-1", 3);
    assert_true(json_is_true(json_object_get(j, "recovered")));
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_ack_sub_encode(&b, 0, -1, "a", 1, 5, "e", 1, false), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,topic,offset,epoch,recovered,");
    assert_true(json_is_false(json_object_get(j, "recovered")));
    json_decref(j);
    dx_buf_clear(&b);

    assert_int_equal(dx__gw_ack_pub_encode(&b, 0, 3, 42, "ep", 2), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,id,offset,epoch,");
    assert_int_member(j, "offset", 42);
    assert_str_member(j, "epoch", "ep", 2);
    json_decref(j);
    dx_buf_clear(&b);

    dx__gw_str users[] = {{"alice", 5}, {"b\"o\\b", 5}, {"\xc3\xa9", 2}};
    assert_int_equal(dx__gw_ack_presence_encode(&b, 0, 4, 7, users, 3), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,id,count,users,");
    assert_int_member(j, "count", 7);
    json_t *ua = json_object_get(j, "users");
    assert_int_equal(json_array_size(ua), 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(json_string_length(json_array_get(ua, i)), users[i].len);
        assert_memory_equal(json_string_value(json_array_get(ua, i)), users[i].p, users[i].len);
    }
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_ack_presence_encode(&b, 0, -1, 0, NULL, 0), 0);
    j = reparse(&b);
    assert_int_equal(json_array_size(json_object_get(j, "users")), 0);
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_ack_presence_encode(&b, 0, -1, 0, NULL, 2), DX_EINVAL);

    assert_int_equal(dx__gw_err_encode(&b, 0, 8, 4404, "unknown op"), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,id,code,reason,");
    assert_int_member(j, "code", 4404);
    assert_str_member(j, "reason", "unknown op", 10);
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_err_encode(&b, 0, -1, 4400, NULL), 0); /* NULL reason: "" */
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,code,reason,");
    json_decref(j);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_err_encode(&b, 0, -1, -1, "x"), DX_EINVAL);

    assert_int_equal(dx__gw_gap_encode(&b, 0, "a.b", 3, 5, 9), 0);
    j = reparse(&b);
    assert_string_equal(keys_of(j, keys, sizeof keys), "op,topic,from,to,");
    assert_str_member(j, "op", "gap", 3);
    assert_int_member(j, "from", 5);
    assert_int_member(j, "to", 9);
    json_decref(j);
    dx_buf_deinit(&b);
}

/* pub(data = v) → msg → data is the same JSON value, for many values */
static void test_pub_json_round_trip(void **state)
{
    (void)state;
    static const char *vals[] = {
        "0", "-1", "9223372036854775807", "-9223372036854775808", "1.5", "0.1", "-2.5e-300", "1e300", "true",
        "false", "null", "[]", "{}", "[1,[2,[3,{}]]]", "{\"k\":\"v\",\"n\":{\"a\":[true,null]}}",
        "\"not reached: a string is text\"", "{\"s\":\"\\u0000\\u001f\\\"\\\\\\/\\u00e9\\ud83d\\ude00\"}",
        "[\"\\u2028\\u2029\"]", "{\"\":\"\",\"a b\":1}",
    };
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        char in[512];
        snprintf(in, sizeof in, "{\"op\":\"pub\",\"id\":1,\"topic\":\"t.x\",\"data\":%s}", vals[i]);
        dx__gw_req req;
        dx__gw_req_err err;
        if (parse(in, &req, &err))
            fail_msg("%s: %s", in, err.reason);
        dx_buf b;
        dx_buf_init(&b, NULL);
        assert_int_equal(dx__gw_msg_encode(&b, 0, req.topic, req.topic_len, 1, "e", 1, req.kind, req.payload,
                                           req.payload_len, NULL, 0),
                         0);
        json_t *m = reparse(&b);
        json_t *want = json_loads(vals[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(want);
        if (!json_equal(json_object_get(m, "data"), want))
            fail_msg("%s: got %.*s", vals[i], (int)b.len, (const char *)dx_buf_head(&b));
        assert_int_equal(req.kind, json_is_string(want) ? DX__GW_KIND_TEXT : DX__GW_KIND_JSON);
        json_decref(want);
        json_decref(m);
        dx_buf_deinit(&b);
        dx__gw_req_free(&req);
    }
    /* binary: b64 in, the same bytes out as b64 */
    dx__gw_req req;
    dx__gw_req_err err;
    assert_int_equal(parse("{\"op\":\"pub\",\"topic\":\"t\",\"b64\":\"AAECA/7/\"}", &req, &err), 0);
    dx_buf b;
    dx_buf_init(&b, NULL);
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 2, "e", 1, req.kind, req.payload, req.payload_len, NULL, 0),
                     0);
    json_t *m = reparse(&b);
    assert_str_member(m, "b64", "AAECA/7/", 8);
    json_decref(m);
    dx_buf_deinit(&b);
    dx__gw_req_free(&req);
}

/* ---- SSE ---------------------------------------------------------------- */

static void test_sse_event_and_id(void **state)
{
    (void)state;
    dx_buf b;
    dx_buf_init(&b, NULL);
    dx__gw_pos pos[3] = {
        {"a", 1, 17, "e1", 2}, {"user:bob", 8, 3, "x-9", 3}, {"user:a:b:", 9, 0, "Z", 1},
    };
    const char *msg = "{\"op\":\"msg\"}";
    assert_int_equal(dx__gw_sse_event_encode(&b, 0, (const uint8_t *)msg, strlen(msg), pos, 3), 0);
    const char *want = "event: msg\ndata: {\"op\":\"msg\"}\nid: a:17:e1,user:bob:3:x-9,user:a:b::0:Z\n\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(dx_buf_head(&b), want, b.len);
    dx_buf_clear(&b);

    /* the id parses back to the same positions, user: topics included */
    assert_int_equal(dx__gw_sse_id_encode(&b, 0, pos, 3), 0);
    dx__gw_pos back[3];
    assert_int_equal(dx__gw_pos_parse((const char *)dx_buf_head(&b), b.len, true, back, 3), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(back[i].topic_len, pos[i].topic_len);
        assert_memory_equal(back[i].topic, pos[i].topic, pos[i].topic_len);
        assert_true(back[i].offset == pos[i].offset);
        assert_int_equal(back[i].epoch_len, pos[i].epoch_len);
        assert_memory_equal(back[i].epoch, pos[i].epoch, pos[i].epoch_len);
    }
    assert_int_equal(dx__gw_pos_parse((const char *)dx_buf_head(&b), b.len, true, back, 2), DX_ELIMIT);
    dx_buf_clear(&b);

    /* no positions: an empty id line */
    assert_int_equal(dx__gw_sse_event_encode(&b, 0, (const uint8_t *)msg, strlen(msg), NULL, 0), 0);
    assert_memory_equal(dx_buf_head(&b), "event: msg\ndata: {\"op\":\"msg\"}\nid: \n\n", b.len);
    dx_buf_clear(&b);
    assert_int_equal(dx__gw_sse_id_encode(&b, 0, NULL, 0), 0);
    assert_int_equal(b.len, 0);

    /* an id that could not be split back is refused */
    dx__gw_pos badp[] = {
        {"a,b", 3, 1, "e", 1}, {"a", 1, 1, "e:1", 3}, {"a", 1, 1, "e,1", 3}, {"", 0, 1, "e", 1},
        {"a", 1, 1, "", 0},    {"a b", 3, 1, "e", 1}, {"a", 1, 1, "e\n", 2}, {"a", 1, DX__GW_JSON_MAX_INT + 1, "e", 1},
        {"a", 1, 1, NULL, 0},
    };
    for (size_t i = 0; i < sizeof badp / sizeof badp[0]; i++) {
        assert_int_equal(dx__gw_sse_id_encode(&b, 0, &badp[i], 1), DX_EINVAL);
        assert_int_equal(dx__gw_sse_event_encode(&b, 0, (const uint8_t *)msg, strlen(msg), &badp[i], 1), DX_EINVAL);
    }
    assert_int_equal(dx__gw_sse_event_encode(&b, 0, (const uint8_t *)"{\n}", 3, pos, 1), DX_EINVAL);
    assert_int_equal(dx__gw_sse_event_encode(&b, 0, (const uint8_t *)"{\r}", 3, pos, 1), DX_EINVAL);
    assert_int_equal(b.len, 0);

    /* a msg encoded by dx__gw_msg_encode always fits on the data line */
    assert_int_equal(dx__gw_msg_encode(&b, 0, "t", 1, 1, "e", 1, DX__GW_KIND_TEXT, (const uint8_t *)"a\r\nb", 4,
                                       NULL, 0),
                     0);
    dx_buf ev;
    dx_buf_init(&ev, NULL);
    assert_int_equal(dx__gw_sse_event_encode(&ev, 0, dx_buf_head(&b), b.len, pos, 1), 0);
    dx_buf_deinit(&ev);
    dx_buf_deinit(&b);
}

static void test_pos_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int with_epoch;
        int n;                  /* or a DX_E code */
        const char *topic0;
        uint64_t off0;
        const char *epoch0;
    } v[] = {
        {"", 1, 0, NULL, 0, NULL},
        {"", 0, 0, NULL, 0, NULL},
        {"a:17", 0, 1, "a", 17, NULL},
        {"a:17,b:3", 0, 2, "a", 17, NULL},
        {"user:42:17", 0, 1, "user:42", 17, NULL},
        {"user:42:17:ep", 1, 1, "user:42", 17, "ep"},
        {"a:0:e,b:9007199254740991:f", 1, 2, "a", 0, "e"},
        {"a::17", 0, 1, "a:", 17, NULL},
        {"a:9007199254740992", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:017", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:-1", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:+1", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:", 0, DX_EINVAL, NULL, 0, NULL},
        {":1", 0, DX_EINVAL, NULL, 0, NULL},
        {"a", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:1,", 0, DX_EINVAL, NULL, 0, NULL},
        {",a:1", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:1,,b:2", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:1", 1, DX_EINVAL, NULL, 0, NULL},       /* epoch form needs the epoch */
        {"a:1:", 1, DX_EINVAL, NULL, 0, NULL},      /* empty epoch */
        {"a:x:e", 1, DX_EINVAL, NULL, 0, NULL},
        {"a b:1", 0, DX_EINVAL, NULL, 0, NULL},
        {"a:1:e\x7f", 1, DX_EINVAL, NULL, 0, NULL},
        {"a:1: e", 1, DX_EINVAL, NULL, 0, NULL},
        {"a:1:e", 0, DX_EINVAL, NULL, 0, NULL},     /* plain form: "e" is not an offset */
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        dx__gw_pos pos[4];
        int n = dx__gw_pos_parse(v[i].in, strlen(v[i].in), v[i].with_epoch, pos, 4);
        if (n != v[i].n)
            fail_msg("pos %zu \"%s\": %d, want %d", i, v[i].in, n, v[i].n);
        if (n > 0) {
            assert_int_equal(pos[0].topic_len, strlen(v[i].topic0));
            assert_memory_equal(pos[0].topic, v[i].topic0, pos[0].topic_len);
            assert_true(pos[0].offset == v[i].off0);
            if (v[i].epoch0) {
                assert_int_equal(pos[0].epoch_len, strlen(v[i].epoch0));
                assert_memory_equal(pos[0].epoch, v[i].epoch0, pos[0].epoch_len);
            } else {
                assert_null(pos[0].epoch);
            }
        }
    }
    dx__gw_pos one[1];
    assert_int_equal(dx__gw_pos_parse("a:1,b:2", 7, false, one, 1), DX_ELIMIT);
    assert_int_equal(dx__gw_pos_parse("a:1", 3, false, NULL, 0), DX_ELIMIT);
}

/* ---- every allocation failed once --------------------------------------- */

/* The parser's own allocations (compact JSON text, decoded b64) and every
 * encoder's output buffer, through the seams; jansson's are on malloc (see
 * dialect.h) and not counted. Returns 0, or the first failure's code. */
static int scenario(dx_test_seams *ts)
{
    static const char *reqs[] = {
        "{\"op\":\"pub\",\"id\":1,\"topic\":\"t\",\"data\":{\"a\":[1,2,3],\"b\":\"xyz\"}}",
        "{\"op\":\"pub\",\"id\":2,\"topic\":\"t\",\"b64\":\"AAECAwQFBgcICQ==\"}",
        "{\"op\":\"pub\",\"id\":3,\"topic\":\"t\",\"data\":\"text\"}",
    };
    dx__gw_pos pos = {"t", 1, 1, "e", 1};
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        dx__gw_req req;
        dx__gw_req_err err;
        int rc = dx__gw_req_parse(&ts->seams, (const uint8_t *)reqs[i], strlen(reqs[i]), 0, &req, &err);
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
            assert_int_equal(err.code, 4503);
            assert_true(err.has_id && err.id == i + 1); /* the err can still echo it */
            return rc;
        }
        dx_buf b, ev;
        dx_buf_init(&b, &ts->seams);
        dx_buf_init(&ev, &ts->seams);
        rc = dx__gw_msg_encode(&b, 0, req.topic, req.topic_len, 1, "e", 1, req.kind, req.payload, req.payload_len,
                               NULL, 0);
        if (!rc)
            rc = dx__gw_sse_event_encode(&ev, 0, dx_buf_head(&b), b.len, &pos, 1);
        if (!rc)
            rc = dx__gw_ack_pub_encode(&b, 0, (int64_t)req.id, 1, "e", 1);
        if (rc) {
            assert_int_equal(rc, DX_ENOMEM);
        } else {
            json_t *j = json_loadb((const char *)dx_buf_head(&ev) + 17, ev.len - 17 - 10, JSON_DISABLE_EOF_CHECK,
                                   NULL);
            assert_non_null(j);
            json_decref(j);
        }
        dx_buf_deinit(&b);
        dx_buf_deinit(&ev);
        dx__gw_req_free(&req);
        if (rc)
            return rc;
    }
    return 0;
}

static void test_fail_every_allocation(void **state)
{
    (void)state;
    dx_test_seams ts;
    dx_test_seams_init(&ts);
    assert_int_equal(scenario(&ts), 0);
    long total = ts.calls;
    assert_true(total >= 6);
    assert_int_equal(ts.live, 0);
    for (long n = 1; n <= total; n++) {
        dx_test_seams_init(&ts);
        ts.fail_at = n;
        assert_int_equal(scenario(&ts), DX_ENOMEM);
        assert_int_equal(ts.live, 0);
    }
    print_message("failed each of %ld allocations once: clean errors, no leak\n", total);
}

int main(void)
{
    dx_test_filter_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_table),
        cmocka_unit_test(test_request_fields),
        cmocka_unit_test(test_size_and_depth_bounds),
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_msg_encode),
        cmocka_unit_test(test_msg_encode_to),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_ack_err_gap_encode),
        cmocka_unit_test(test_pub_json_round_trip),
        cmocka_unit_test(test_sse_event_and_id),
        cmocka_unit_test(test_pos_parse),
        cmocka_unit_test(test_fail_every_allocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
