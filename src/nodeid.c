/* nodeid.c - the nodeids of nodes, and what a forgotten nodeid still names.
 *
 * The kernel puts a node's nodeid and generation in the file handles it makes inside the mount
 * (name_to_handle_at), and open_by_handle_at of a nodeid it no longer caches sends LOOKUP of
 * (nodeid, "."). Such a nodeid comes from user space and is never trusted: it is an index into
 * a table of slots plus the slot's generation, (gen << 32) | index, so an unknown, stale or
 * forged one is recognised without touching memory it might name. The root is 1.
 *
 * When a node is freed (its FORGET), its slot keeps the backing object's file handle: a LOOKUP
 * "." of that nodeid reopens the object by handle and makes its node again with the same
 * nodeid (export.c), and a LOOKUP by name of the same object gets that nodeid
 * back too (nodeid_attach). At most MAX_KEPT slots are kept so, oldest given up first; a slot
 * given up is reused for another object with the next generation, which the kernel compares
 * with the handle's (ESTALE). Generations start at a random value per daemon, so a handle made
 * under an earlier mount is stale here rather than naming whatever now has its index.
 * docs/design.md §3. */
#define _GNU_SOURCE
#include "nodeid.h"
#include "log.h"
#include "node.h"
#include "nodefd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BITS   12
#define CHUNK_SLOTS  (1u << CHUNK_BITS)
#define MAX_CHUNKS   (1u << 16) /* 2^28 nodeids live or kept at once */
#define MAX_KEPT     (1u << 16) /* forgotten nodeids that keep their object's handle */
#define KEPT_BUCKETS (1u << 16)
#define FIRST	     2 /* index 0 is no nodeid, 1 the root */

struct slot {
	struct node *live;   /* atomic: the node that has the nodeid, NULL if none */
	uint32_t gen;	     /* atomic: the generation of the object that has or had it */
	uint32_t next, prev; /* the free list (next), or the list of kept slots */
	uint32_t hnext;	     /* kept: chain of kept[] */
	bool kept;	     /* forgotten, fh finds the object again */
	bool in_versions;    /* a directory of the .versions/ view */
	dev_t dev;
	ino_t ino;
	struct file_handle *fh; /* the object's handle on the backing filesystem, or NULL */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* under the node table's lock */
static struct slot *chunks[MAX_CHUNKS];			 /* set once each (atomic), never moved */
static struct node *root;
static uint32_t used = FIRST;	      /* indexes below have been handed out */
static uint32_t free_head, free_tail; /* slots to reuse, oldest freed first */
static uint32_t kept_head, kept_tail; /* kept slots, oldest forgotten first */
static unsigned nkept;
static uint32_t *kept;	   /* KEPT_BUCKETS chains by (dev, ino) */
static uint32_t gen_first; /* a new slot's first generation: random per daemon, so a handle
			    * from an earlier mount does not name an object of this one */

static struct slot *slot_of(uint32_t idx)
{
	struct slot *c;

	if (idx < FIRST || (idx >> CHUNK_BITS) >= MAX_CHUNKS)
		return NULL;
	c = __atomic_load_n(&chunks[idx >> CHUNK_BITS], __ATOMIC_ACQUIRE);
	return c ? &c[idx & (CHUNK_SLOTS - 1)] : NULL;
}

static uint32_t bucket(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev;
	return (uint32_t)(h ^ (h >> 32)) & (KEPT_BUCKETS - 1);
}

void nodeid_init(struct node *r)
{
	kept = calloc(KEPT_BUCKETS, sizeof(*kept));
	if (!kept)
		fatal("nodeid table");
	root = r;
	if (getrandom(&gen_first, sizeof(gen_first), 0) != sizeof(gen_first))
		gen_first = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 16;
	if (!gen_first)
		gen_first = 1;
}

void nodeid_destroy(void)
{
	for (uint32_t i = 0; i < MAX_CHUNKS && chunks[i]; i++) {
		for (uint32_t j = 0; j < CHUNK_SLOTS; j++)
			free(chunks[i][j].fh);
		free(chunks[i]);
		chunks[i] = NULL;
	}
	free(kept);
	kept = NULL;
	used = FIRST;
	free_head = free_tail = kept_head = kept_tail = 0;
	nkept = 0;
}

/* The slot, and the id's generation matches; lock held or the id is the kernel's. */
static struct slot *slot_of_id(uint64_t id)
{
	struct slot *s = slot_of((uint32_t)id);

	return s && __atomic_load_n(&s->gen, __ATOMIC_ACQUIRE) == nodeid_gen(id) ? s : NULL;
}

struct node *nodeid_node(uint64_t id)
{
	struct slot *s;

	if (id == NODEID_ROOT)
		return root;
	s = slot_of_id(id);
	return s ? __atomic_load_n(&s->live, __ATOMIC_ACQUIRE) : NULL;
}

static void unkeep(uint32_t idx)
{
	struct slot *s = slot_of(idx);

	for (uint32_t *p = &kept[bucket(s->dev, s->ino)]; *p; p = &slot_of(*p)->hnext) {
		if (*p == idx) {
			*p = s->hnext;
			break;
		}
	}
	if (s->prev)
		slot_of(s->prev)->next = s->next;
	else
		kept_head = s->next;
	if (s->next)
		slot_of(s->next)->prev = s->prev;
	else
		kept_tail = s->prev;
	s->kept = false;
	s->next = s->prev = s->hnext = 0;
	nkept--;
}

static void release_slot(uint32_t idx)
{
	struct slot *s = slot_of(idx);

	free(s->fh);
	s->fh = NULL;
	s->next = 0;
	if (free_tail)
		slot_of(free_tail)->next = idx;
	else
		free_head = idx;
	free_tail = idx;
}

static uint32_t new_slot(void)
{
	uint32_t idx = free_head;
	struct slot *s;

	if (idx) {
		s = slot_of(idx);
		free_head = s->next;
		if (!free_head)
			free_tail = 0;
		s->next = 0;
		/* another object: a handle of the old one fails the kernel's generation check */
		uint32_t gen = s->gen + 1 ? s->gen + 1 : 1;
		__atomic_store_n(&s->gen, gen, __ATOMIC_RELEASE);
		return idx;
	}
	if ((used >> CHUNK_BITS) >= MAX_CHUNKS)
		return 0;
	if (!chunks[used >> CHUNK_BITS]) {
		struct slot *c = calloc(CHUNK_SLOTS, sizeof(*c));
		if (!c)
			return 0;
		__atomic_store_n(&chunks[used >> CHUNK_BITS], c, __ATOMIC_RELEASE);
	}
	s = slot_of(used);
	__atomic_store_n(&s->gen, gen_first, __ATOMIC_RELEASE);
	return used++;
}

static struct file_handle *copy_handle(const struct file_handle *fh)
{
	struct file_handle *c = malloc(sizeof(*c) + fh->handle_bytes);

	if (c)
		memcpy(c, fh, sizeof(*c) + fh->handle_bytes);
	return c;
}

bool nodeid_attach(struct node *n, const struct file_handle *fh)
{
	uint32_t idx = 0;
	struct slot *s;

	pthread_mutex_lock(&lock);
	if (fh && n->kind != NODE_STAGING) {
		for (uint32_t k = kept[bucket(n->dev, n->ino)]; k; k = slot_of(k)->hnext) {
			s = slot_of(k);
			if (s->dev != n->dev || s->ino != n->ino)
				continue;
			unkeep(k);
			if (nodefd_same(s->fh, fh))
				idx = k; /* the same object, forgotten: its nodeid again */
			else
				release_slot(k); /* its inode number was reused behind us */
			break;
		}
	}
	if (!idx) {
		struct file_handle *c = fh && n->kind != NODE_STAGING ? copy_handle(fh) : NULL;
		if ((fh && n->kind != NODE_STAGING && !c) || !(idx = new_slot())) {
			pthread_mutex_unlock(&lock);
			free(c);
			return false;
		}
		slot_of(idx)->fh = c;
	}
	s = slot_of(idx);
	s->dev = n->dev;
	s->ino = n->ino;
	s->in_versions = n->in_versions;
	n->id = (uint64_t)s->gen << 32 | idx;
	__atomic_store_n(&s->live, n, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&lock);
	return true;
}

void nodeid_detach(struct node *n)
{
	uint32_t idx = (uint32_t)n->id;
	struct slot *s;

	if (!n->id || n == root)
		return;
	pthread_mutex_lock(&lock);
	s = slot_of(idx);
	__atomic_store_n(&s->live, NULL, __ATOMIC_RELEASE);
	if (s->fh) {
		s->kept = true;
		s->prev = kept_tail;
		s->next = 0;
		if (kept_tail)
			slot_of(kept_tail)->next = idx;
		else
			kept_head = idx;
		kept_tail = idx;
		s->hnext = kept[bucket(s->dev, s->ino)];
		kept[bucket(s->dev, s->ino)] = idx;
		if (++nkept > MAX_KEPT) {
			uint32_t old = kept_head;
			unkeep(old);
			release_slot(old);
		}
	} else {
		release_slot(idx);
	}
	pthread_mutex_unlock(&lock);
	n->id = 0;
}

struct file_handle *nodeid_forgotten(uint64_t id, bool *in_versions)
{
	struct file_handle *fh = NULL;
	struct slot *s;

	pthread_mutex_lock(&lock);
	s = id == NODEID_ROOT ? NULL : slot_of_id(id);
	if (s && s->kept && !s->live) {
		fh = copy_handle(s->fh);
		*in_versions = s->in_versions;
	}
	pthread_mutex_unlock(&lock);
	return fh;
}

void nodeid_drop(uint64_t id)
{
	struct slot *s;

	pthread_mutex_lock(&lock);
	s = id == NODEID_ROOT ? NULL : slot_of_id(id);
	if (s && s->kept && !s->live) {
		unkeep((uint32_t)id);
		release_slot((uint32_t)id);
	}
	pthread_mutex_unlock(&lock);
}
