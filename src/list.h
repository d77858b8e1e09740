/* list.h - an intrusive doubly linked list, for the few "every X that is open" sets. */
#ifndef BINVFS_LIST_H
#define BINVFS_LIST_H

#include <stddef.h>

struct list {
	struct list *prev, *next;
};

#define LIST_HEAD_INIT(h)                                                                          \
	{                                                                                          \
		&(h), &(h)                                                                         \
	}
#define list_entry(l, type, member) ((type *)((char *)(l)-offsetof(type, member)))

static inline void list_insert(struct list *head, struct list *e)
{
	e->next = head->next;
	e->prev = head;
	head->next->prev = e;
	head->next = e;
}

static inline void list_remove(struct list *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
}

static inline struct list *list_first(struct list *head)
{
	return head->next != head ? head->next : NULL;
}

#endif
