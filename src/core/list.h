/*
 * src/core/list.h: an intrusive, circular, doubly linked list.
 *
 * The node lives inside the element, so linking never allocates. An empty
 * list is a head that points at itself. All operations are O(1) except
 * iteration. Not thread-safe: a list belongs to one loop.
 */
#ifndef DX_CORE_LIST_H
#define DX_CORE_LIST_H

#include <stddef.h>

typedef struct dx_list {
    struct dx_list *next, *prev;
} dx_list;

#define DX_LIST_INIT(name) {&(name), &(name)}

/* The element that contains `node`, given its type and member name. */
#define dx_list_entry(node, type, member) ((type *)(void *)((char *)(node) - offsetof(type, member)))

static inline void dx_list_init(dx_list *head) { head->next = head->prev = head; }

static inline int dx_list_empty(const dx_list *head) { return head->next == head; }

/* A node that was initialised or removed reports itself unlinked. */
static inline int dx_list_linked(const dx_list *node) { return node->next != node; }

static inline void dx__list_insert(dx_list *node, dx_list *prev, dx_list *next)
{
    node->prev = prev;
    node->next = next;
    prev->next = node;
    next->prev = node;
}

static inline void dx_list_push_back(dx_list *head, dx_list *node) { dx__list_insert(node, head->prev, head); }

static inline void dx_list_push_front(dx_list *head, dx_list *node) { dx__list_insert(node, head, head->next); }

/* Unlinks `node` and leaves it pointing at itself (safe to remove twice). */
static inline void dx_list_remove(dx_list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->next = node->prev = node;
}

/* Moves every node of `from` to the head `to` (its old contents, if any,
 * are dropped: pass a fresh head), in order; `from` is left empty. */
static inline void dx_list_take(dx_list *to, dx_list *from)
{
    dx_list_init(to);
    if (dx_list_empty(from))
        return;
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    dx_list_init(from);
}

/* The first node, or NULL when empty. */
static inline dx_list *dx_list_first(const dx_list *head) { return dx_list_empty(head) ? NULL : head->next; }

/* Iterate; `it` may be removed inside the body when using the _safe form. */
#define dx_list_foreach(it, head) for (dx_list *it = (head)->next; it != (head); it = it->next)
#define dx_list_foreach_safe(it, tmp, head)                                                \
    for (dx_list *it = (head)->next, *tmp = it->next; it != (head); it = tmp, tmp = it->next)

#endif
