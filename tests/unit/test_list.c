/* tests/unit/test_list.c: src/core/list.h — intrusive circular doubly linked list. */
#include "testutil.h"

#include "core/list.h"

#include <string.h>

typedef struct item {
    int id;
    dx_list node; /* not first: dx_list_entry must subtract the offset */
    char pad[3];
} item;

/* Collects the ids in list order into `out`; returns the count. */
static size_t ids(const dx_list *head, int *out, size_t cap)
{
    size_t n = 0;
    dx_list_foreach(it, head)
    {
        assert_true(n < cap);
        out[n++] = dx_list_entry(it, item, node)->id;
    }
    return n;
}

/* next/prev agree all the way round, both directions. */
static void assert_well_formed(const dx_list *head)
{
    const dx_list *p = head;
    size_t fwd = 0, back = 0;
    do {
        assert_ptr_equal(p->next->prev, p);
        assert_ptr_equal(p->prev->next, p);
        p = p->next;
        fwd++;
        assert_true(fwd < 100000);
    } while (p != head);
    p = head;
    do {
        p = p->prev;
        back++;
    } while (p != head);
    assert_int_equal(fwd, back);
}

static void assert_ids(const dx_list *head, const int *want, size_t n)
{
    int got[64];
    size_t k = ids(head, got, 64);
    assert_int_equal(k, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(got[i], want[i]);
    assert_well_formed(head);
}

static void test_init_empty(void **state)
{
    (void)state;
    dx_list head;
    dx_list_init(&head);
    assert_true(dx_list_empty(&head));
    assert_null(dx_list_first(&head));
    assert_false(dx_list_linked(&head));
    int n = 0;
    dx_list_foreach(it, &head)
    {
        (void)it;
        n++;
    }
    assert_int_equal(n, 0);
    /* The static initialiser gives the same empty list. */
    static dx_list s = DX_LIST_INIT(s);
    assert_true(dx_list_empty(&s));
    assert_ptr_equal(s.next, &s);
    assert_ptr_equal(s.prev, &s);
    dx_list_foreach_safe(it, tmp, &s)
    {
        (void)it;
        n++;
    }
    assert_int_equal(n, 0);
}

static void test_push_back_front_order(void **state)
{
    (void)state;
    dx_list head;
    dx_list_init(&head);
    item it[5];
    for (int i = 0; i < 5; i++) {
        it[i].id = i;
        dx_list_init(&it[i].node);
        assert_false(dx_list_linked(&it[i].node));
    }
    dx_list_push_back(&head, &it[1].node);
    dx_list_push_back(&head, &it[2].node);
    dx_list_push_front(&head, &it[0].node);
    dx_list_push_back(&head, &it[3].node);
    dx_list_push_front(&head, &it[4].node);
    const int want[] = {4, 0, 1, 2, 3};
    assert_ids(&head, want, 5);
    assert_false(dx_list_empty(&head));
    for (int i = 0; i < 5; i++)
        assert_true(dx_list_linked(&it[i].node));
    assert_ptr_equal(dx_list_first(&head), &it[4].node);
    assert_ptr_equal(head.prev, &it[3].node);
}

static void test_remove(void **state)
{
    (void)state;
    dx_list head;
    dx_list_init(&head);
    item it[4];
    for (int i = 0; i < 4; i++) {
        it[i].id = i;
        dx_list_push_back(&head, &it[i].node);
    }
    dx_list_remove(&it[2].node); /* middle */
    assert_false(dx_list_linked(&it[2].node));
    assert_ptr_equal(it[2].node.next, &it[2].node);
    assert_ptr_equal(it[2].node.prev, &it[2].node);
    const int w1[] = {0, 1, 3};
    assert_ids(&head, w1, 3);
    dx_list_remove(&it[0].node); /* first */
    const int w2[] = {1, 3};
    assert_ids(&head, w2, 2);
    assert_ptr_equal(dx_list_first(&head), &it[1].node);
    dx_list_remove(&it[3].node); /* last */
    const int w3[] = {1};
    assert_ids(&head, w3, 1);
    /* Removing twice is a no-op on an unlinked node and leaves the list alone. */
    dx_list_remove(&it[3].node);
    dx_list_remove(&it[2].node);
    assert_ids(&head, w3, 1);
    dx_list_remove(&it[1].node);
    assert_true(dx_list_empty(&head));
    assert_null(dx_list_first(&head));
    assert_well_formed(&head);
    dx_list_remove(&it[1].node);
    assert_true(dx_list_empty(&head));
    /* A removed node can be pushed again, onto another list. */
    dx_list other;
    dx_list_init(&other);
    dx_list_push_back(&other, &it[2].node);
    dx_list_push_front(&other, &it[1].node);
    const int w4[] = {1, 2};
    assert_ids(&other, w4, 2);
    assert_true(dx_list_empty(&head));
}

static void test_foreach_safe_removal(void **state)
{
    (void)state;
    dx_list head;
    dx_list_init(&head);
    item it[10];
    for (int i = 0; i < 10; i++) {
        it[i].id = i;
        dx_list_push_back(&head, &it[i].node);
    }
    /* Remove the odd ones while iterating. */
    int seen = 0;
    dx_list_foreach_safe(n, tmp, &head)
    {
        item *e = dx_list_entry(n, item, node);
        assert_int_equal(e->id, seen);
        seen++;
        if (e->id % 2)
            dx_list_remove(n);
    }
    assert_int_equal(seen, 10);
    const int even[] = {0, 2, 4, 6, 8};
    assert_ids(&head, even, 5);
    /* Move every element to another list while iterating: drains the first. */
    dx_list dst;
    dx_list_init(&dst);
    dx_list_foreach_safe(n, tmp, &head)
    {
        dx_list_remove(n);
        dx_list_push_front(&dst, n);
    }
    assert_true(dx_list_empty(&head));
    assert_well_formed(&head);
    const int rev[] = {8, 6, 4, 2, 0};
    assert_ids(&dst, rev, 5);
    /* Drain by removing everything. */
    int k = 0;
    dx_list_foreach_safe(n, tmp, &dst)
    {
        dx_list_remove(n);
        k++;
    }
    assert_int_equal(k, 5);
    assert_true(dx_list_empty(&dst));
}

static void test_first_as_queue(void **state)
{
    (void)state;
    dx_list head;
    dx_list_init(&head);
    item it[3] = {{.id = 10}, {.id = 11}, {.id = 12}};
    for (int i = 0; i < 3; i++)
        dx_list_push_back(&head, &it[i].node);
    int want = 10;
    dx_list *n;
    while ((n = dx_list_first(&head)) != NULL) {
        item *e = dx_list_entry(n, item, node);
        assert_int_equal(e->id, want++);
        dx_list_remove(n);
    }
    assert_int_equal(want, 13);
}

/* dx_list_take: all of a list to a fresh head, in order, the source empty
 * and reusable; an empty source gives an empty head (not one pointing at
 * the source). */
static void test_take(void **state)
{
    (void)state;
    dx_list from, to;
    dx_list_init(&from);
    dx_list_take(&to, &from);
    assert_true(dx_list_empty(&to));
    assert_true(dx_list_empty(&from));
    assert_well_formed(&to);
    item it[4] = {{.id = 1}, {.id = 2}, {.id = 3}, {.id = 4}};
    for (int i = 0; i < 3; i++)
        dx_list_push_back(&from, &it[i].node);
    dx_list_take(&to, &from);
    static const int want[] = {1, 2, 3};
    assert_ids(&to, want, 3);
    assert_true(dx_list_empty(&from));
    assert_well_formed(&from);
    dx_list_push_back(&from, &it[3].node); /* the source goes on as a list */
    static const int four[] = {4};
    assert_ids(&from, four, 1);
    dx_list_take(&to, &from); /* a head taken into is fresh again */
    assert_ids(&to, four, 1);
}

static void test_entry(void **state)
{
    (void)state;
    item x = {.id = 42};
    dx_list *n = &x.node;
    assert_ptr_equal(dx_list_entry(n, item, node), &x);
    assert_int_equal(dx_list_entry(n, item, node)->id, 42);
    /* A node that is the first member. */
    struct first {
        dx_list node;
        int v;
    } f = {.v = 7};
    assert_ptr_equal(dx_list_entry(&f.node, struct first, node), &f);
    assert_int_equal(dx_list_entry(&f.node, struct first, node)->v, 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),
        cmocka_unit_test(test_push_back_front_order),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_foreach_safe_removal),
        cmocka_unit_test(test_take),
        cmocka_unit_test(test_first_as_queue),
        cmocka_unit_test(test_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
