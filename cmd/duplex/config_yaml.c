/*
 * cmd/duplex/config_yaml.c: `duplex serve --config FILE` (config_int.h).
 *
 * The file is read with libyaml's event parser into a small tree (scalars,
 * mappings, sequences, each with its line), then walked against the schema:
 * every scalar is typed by its key's row, never by YAML's own rules, so
 * `no`, `on`, `1.0` or `010` are what the key's type says (a string stays a
 * string; a boolean is exactly true/false/on/off; a number is decimal).
 * Anchors, aliases and tags are refused (nothing in the schema needs them,
 * and aliases are how a small file becomes a large tree).
 *
 * Layer: the CLI (public headers only).
 */
#define _GNU_SOURCE
#include "config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_DEPTH 16

enum { Y_SCALAR, Y_MAP, Y_SEQ };
typedef struct ynode {
    int type;
    unsigned line;
    bool null;          /* a plain empty, ~ or null scalar */
    char *s;            /* Y_SCALAR */
    struct ynode **kid; /* Y_MAP: key, value, key, value...; Y_SEQ: items */
    size_t n;
} ynode;

static void yfree(ynode *y)
{
    if (!y)
        return;
    for (size_t i = 0; i < y->n; i++)
        yfree(y->kid[i]);
    free(y->kid);
    free(y->s);
    free(y);
}

typedef struct yreader {
    yaml_parser_t p;
    build *b;
    origin o;
} yreader;

static int yfail(yreader *r, unsigned line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int yfail(yreader *r, unsigned line, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(r->b->err, r->b->errlen, "%s:%u: %s", r->o.file, line, msg);
    cfg_one_line(r->b->err, r->b->errlen);
    return -1;
}

static int ynext(yreader *r, yaml_event_t *ev)
{
    if (yaml_parser_parse(&r->p, ev))
        return 0;
    const yaml_mark_t *m = r->p.problem_mark.line || r->p.problem_mark.column ? &r->p.problem_mark
                                                                              : &r->p.context_mark;
    return yfail(r, (unsigned)m->line + 1, "YAML syntax: %s%s%s", r->p.problem ? r->p.problem : "error",
                 r->p.context ? " " : "", r->p.context ? r->p.context : "");
}

/* The node starting with event ev (consumed); NULL after an error. */
static ynode *ynode_read(yreader *r, yaml_event_t *ev, int depth)
{
    unsigned line = (unsigned)ev->start_mark.line + 1;
    if (depth > MAX_DEPTH) {
        yfail(r, line, "nested too deeply");
        return NULL;
    }
    const yaml_char_t *anchor = NULL, *tag = NULL;
    int type;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        type = Y_SCALAR;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        type = Y_SEQ;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        type = Y_MAP;
        break;
    case YAML_ALIAS_EVENT:
        yfail(r, line, "YAML aliases (*name) are not accepted");
        return NULL;
    default:
        yfail(r, line, "unexpected YAML event");
        return NULL;
    }
    if (anchor || tag) {
        yfail(r, line, "YAML %s are not accepted", anchor ? "anchors (&name)" : "tags (!name)");
        return NULL;
    }
    ynode *y = calloc(1, sizeof *y);
    if (!y) {
        yfail(r, line, "out of memory");
        return NULL;
    }
    y->type = type;
    y->line = line;
    if (type == Y_SCALAR) {
        const char *v = (const char *)ev->data.scalar.value;
        size_t n = ev->data.scalar.length;
        if (memchr(v, '\0', n)) {
            yfail(r, line, "a NUL character in a value");
            free(y);
            return NULL;
        }
        y->s = strndup(v, n);
        y->null = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                  (n == 0 || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL"));
        if (!y->s) {
            yfail(r, line, "out of memory");
            free(y);
            return NULL;
        }
        return y;
    }
    yaml_event_type_t end = type == Y_SEQ ? YAML_SEQUENCE_END_EVENT : YAML_MAPPING_END_EVENT;
    for (;;) {
        yaml_event_t e;
        if (ynext(r, &e))
            goto fail;
        if (e.type == end) {
            yaml_event_delete(&e);
            return y;
        }
        if (type == Y_MAP && (y->n % 2) == 0 && e.type != YAML_SCALAR_EVENT) {
            yfail(r, (unsigned)e.start_mark.line + 1, "a key must be a plain name");
            yaml_event_delete(&e);
            goto fail;
        }
        ynode *k = ynode_read(r, &e, depth + 1);
        yaml_event_delete(&e);
        if (!k)
            goto fail;
        ynode **kids = realloc(y->kid, (y->n + 1) * sizeof *kids);
        if (!kids) {
            yfree(k);
            yfail(r, line, "out of memory");
            goto fail;
        }
        y->kid = kids;
        y->kid[y->n++] = k;
    }
fail:
    yfree(y);
    return NULL;
}

/* The document's root (NULL and no error for an empty file). */
static int yload(yreader *r, FILE *f, ynode **root)
{
    *root = NULL;
    yaml_event_t ev;
    yaml_parser_set_input_file(&r->p, f);
    int docs = 0;
    for (;;) {
        if (ynext(r, &ev))
            return -1;
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        if (t == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
            unsigned line = (unsigned)ev.start_mark.line + 1;
            yaml_event_delete(&ev);
            return yfail(r, line, "one YAML document only");
        }
        if (t == YAML_SCALAR_EVENT || t == YAML_SEQUENCE_START_EVENT || t == YAML_MAPPING_START_EVENT ||
            t == YAML_ALIAS_EVENT) {
            ynode *y = ynode_read(r, &ev, 0);
            yaml_event_delete(&ev);
            if (!y)
                return -1;
            if (y->type == Y_SCALAR && y->null) {
                yfree(y); /* an empty document */
                continue;
            }
            if (y->type != Y_MAP) {
                unsigned line = y->line;
                yfree(y);
                return yfail(r, line, "expected a mapping of keys at the top level");
            }
            *root = y;
            continue;
        }
        yaml_event_delete(&ev);
    }
}

static int walk_map(yreader *r, const ynode *m, const char *spath, const char *dpath, void *elem, int where);

/* A sequence of mappings (listen.tls, api.keys, namespaces). */
static int walk_seq(yreader *r, const row *seq, const ynode *v, const char *dpath)
{
    serve_config *c = r->b->c;
    r->o.line = v->line;
    if (v->type != Y_SEQ)
        return cfg_fail(r->b, &r->o, dpath, "expected a list (lines starting with '- ')");
    int where = !strcmp(seq->key, "listen.tls") ? W_TLS : !strcmp(seq->key, "api.keys") ? W_KEY : W_NS;
    if (where == W_TLS) {
        c->ncerts = 0;
        r->b->list_src[cfg_row_index(seq)] = CFG_SRC_FILE;
    } else if (where == W_KEY) {
        c->nkeys = 0;
    } else {
        c->nns = 0;
    }
    for (size_t i = 0; i < v->n; i++) {
        const ynode *item = v->kid[i];
        char dp[192], sp[64];
        snprintf(dp, sizeof dp, "%s[%zu]", dpath, i);
        snprintf(sp, sizeof sp, "%s[]", seq->key);
        r->o.line = item->line;
        if (item->type != Y_MAP)
            return cfg_fail(r->b, &r->o, dp, "expected a mapping (key: value lines)");
        void *elem;
        if (where == W_TLS) {
            if (c->ncerts == MAX_CERTS)
                return cfg_fail(r->b, &r->o, dp, "more than %d certificates", MAX_CERTS);
            elem = cfg_push(&c->certs, &c->ncerts, sizeof *c->certs);
        } else if (where == W_KEY) {
            elem = cfg_push(&c->keys, &c->nkeys, sizeof *c->keys);
        } else {
            elem = cfg_push(&c->ns, &c->nns, sizeof *c->ns);
        }
        if (!elem)
            return cfg_fail(r->b, &r->o, dp, "out of memory");
        if (walk_map(r, item, sp, dp, elem, where))
            return -1;
        r->o.line = item->line;
        if (where == W_TLS) {
            dx_tls_cert *t = elem;
            if (!t->cert_file || !t->key_file)
                return cfg_fail(r->b, &r->o, dp, "needs both cert and key");
        } else if (where == W_KEY) {
            dx_gateway_api_key *k = elem;
            if (!k->name || !k->key)
                return cfg_fail(r->b, &r->o, dp, "needs both name and key");
            for (size_t j = 0; j + 1 < c->nkeys; j++)
                if (!strcmp(c->keys[j].name, k->name))
                    return cfg_fail(r->b, &r->o, dp, "API key name \"%s\" used twice", k->name);
        } else {
            dx_gateway_namespace *n = elem;
            if (!n->prefix)
                return cfg_fail(r->b, &r->o, dp, "a namespace needs a prefix");
            for (size_t j = 0; j + 1 < c->nns; j++)
                if (!strcmp(c->ns[j].prefix, n->prefix))
                    return cfg_fail(r->b, &r->o, dp, "prefix \"%s\" given twice", n->prefix);
        }
    }
    r->o.line = v->line;
    cfg_mark(r->b, seq, &r->o);
    return 0;
}

static int walk_map(yreader *r, const ynode *m, const char *spath, const char *dpath, void *elem, int where)
{
    for (size_t i = 0; i + 1 < m->n; i += 2) {
        const ynode *k = m->kid[i], *v = m->kid[i + 1];
        char skey[128], dkey[160];
        snprintf(skey, sizeof skey, "%s%s%s", spath, *spath ? "." : "", k->s);
        snprintf(dkey, sizeof dkey, "%s%s%s", dpath, *dpath ? "." : "", k->s);
        r->o.line = k->line;
        for (size_t j = 0; j < i; j += 2)
            if (!strcmp(m->kid[j]->s, k->s))
                return cfg_fail(r->b, &r->o, dkey, "duplicate key (first at line %u)", m->kid[j]->line);
        const row *rw = cfg_find_row(skey);
        if (!rw) {
            if (cfg_is_section(skey) && !strchr(skey, '[')) {
                if (v->type != Y_MAP) {
                    r->o.line = v->line;
                    return cfg_fail(r->b, &r->o, dkey, "expected a mapping (a section of keys)");
                }
                if (walk_map(r, v, skey, dkey, NULL, W_APP))
                    return -1;
                continue;
            }
            return cfg_fail(r->b, &r->o, dkey, "unknown key");
        }
        if (rw->kind == K_SEQ) {
            if (walk_seq(r, rw, v, dkey))
                return -1;
            continue;
        }
        r->o.line = v->line;
        if (v->type == Y_SEQ && (rw->fl & R_JOIN) && v->n) {
            char joined[8192];
            size_t n = 0;
            for (size_t j = 0; j < v->n; j++) {
                r->o.line = v->kid[j]->line;
                if (v->kid[j]->type != Y_SCALAR || v->kid[j]->null || !v->kid[j]->s[0])
                    return cfg_fail(r->b, &r->o, dkey, "expected a list of strings");
                size_t l = strlen(v->kid[j]->s);
                if (n + l + 2 > sizeof joined)
                    return cfg_fail(r->b, &r->o, dkey, "list too long");
                if (n)
                    joined[n++] = ',';
                memcpy(joined + n, v->kid[j]->s, l);
                n += l;
            }
            joined[n] = 0;
            r->o.line = v->line;
            if (cfg_apply(r->b, rw, cfg_row_base(r->b->c, rw), dkey, joined, &r->o))
                return -1;
            cfg_mark(r->b, rw, &r->o);
            continue;
        }
        if (rw->kind == K_LIST) {
            if (v->type != Y_SEQ)
                return cfg_fail(r->b, &r->o, dkey, "expected a list (lines starting with '- ')");
            r->b->c->norigins = 0;
            r->b->list_src[cfg_row_index(rw)] = CFG_SRC_FILE;
            for (size_t j = 0; j < v->n; j++) {
                r->o.line = v->kid[j]->line;
                if (v->kid[j]->type != Y_SCALAR || v->kid[j]->null)
                    return cfg_fail(r->b, &r->o, dkey, "expected a list of strings");
                if (cfg_list_add(r->b, rw, v->kid[j]->s, strlen(v->kid[j]->s), &r->o))
                    return -1;
            }
            r->o.line = v->line;
            cfg_mark(r->b, rw, &r->o);
            continue;
        }
        if (v->type != Y_SCALAR)
            return cfg_fail(r->b, &r->o, dkey, "expected a single value, got a %s", v->type == Y_MAP ? "mapping" : "list");
        if (v->null) {
            char exp[200];
            return cfg_fail(r->b, &r->o, dkey, "expected %s, got nothing", cfg_expected(rw, exp, sizeof exp));
        }
        void *base = where == W_APP ? cfg_row_base(r->b->c, rw) : elem;
        if (cfg_apply(r->b, rw, base, dkey, v->s, &r->o))
            return -1;
        if (where == W_APP)
            cfg_mark(r->b, rw, &r->o);
    }
    return 0;
}

int cfg_load_file(build *b, const char *path)
{
    yreader r = {.b = b, .o = {.src = CFG_SRC_FILE, .file = path, .line = 0}};
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(b->err, b->errlen, "%s: cannot read the configuration file: %s", path, strerror(errno));
        return -1;
    }
    if (!yaml_parser_initialize(&r.p)) {
        fclose(f);
        snprintf(b->err, b->errlen, "%s: out of memory", path);
        return -1;
    }
    ynode *root = NULL;
    int rc = yload(&r, f, &root);
    if (rc == 0 && root)
        rc = walk_map(&r, root, "", "", NULL, W_APP);
    yfree(root);
    yaml_parser_delete(&r.p);
    fclose(f);
    return rc;
}
